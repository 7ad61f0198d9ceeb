"use strict";
// Attention-flow view. Data (hooked_vlm/viz/frames.py): rows of attention_flow (layer, head, role, weight, share, n).
(() => {
  const D = HV.data, el = HV.el, svg = HV.svg;
  const heads = [...new Set(D.rows.map(r => r.head))].sort((a, b) => a - b);
  const roles = [...new Set(D.rows.map(r => r.role))];
  const S = {head: heads[0]};
  const hname = h => (h < 0 ? "sum over heads" : `head ${h}`);
  const pick = el("select", {id: "head"}, heads.map(h => el("option", {value: h, text: hname(h)})));
  const readout = el("div", {id: "readout", class: "note", style: "min-height:1.4em;color:#222;font-size:12px"});
  const chartBox = el("div", {});
  const cols = Object.keys(D.rows[0]).map(k => ({key: k, label: k}));
  document.getElementById("app").append(el("div", {class: "controls"}, heads.length > 1 ? el("label", {}, "head", pick) : null,
    el("span", {}, roles.map((r, i) => el("span", {style: "margin-right:10px"},
      el("span", {style: `display:inline-block;width:10px;height:10px;background:${HV.PALETTE[i % 10]};margin-right:3px`}), r)))),
    chartBox, readout, HV.table(cols, D.rows, r => say(r)));
  pick.addEventListener("change", () => { S.head = +pick.value; draw(); });
  const say = r => { readout.textContent = `layer ${r.layer}, ${hname(r.head)}, ${r.role}: share ${HV.fmt(r.share)}, ` +
    `mean attention mass ${HV.fmt(r.weight)}` + (r.n != null ? ` over ${r.n} examples` : ""); };
  function draw() {
    const rows = D.rows.filter(r => r.head === S.head);
    const layers = [...new Set(rows.map(r => r.layer))].sort((a, b) => a - b);
    const box = {left: 56, top: 24, width: Math.max(240, 44 * layers.length), height: 220};
    const root = svg("svg", {width: box.width + 80, height: 290, id: "chart"});
    const {sx, sy} = HV.axes(root, box, -0.5, layers.length - 0.5, 0, 1, [], "layer", "share of the attention");
    root.append(svg("text", {x: box.left, y: 14, text: `share of each key role per layer (${hname(S.head)})`}));
    const bw = 0.7 * box.width / layers.length;
    layers.forEach((l, i) => {
      let acc = 0;
      root.append(svg("text", {x: sx(i), y: box.top + box.height + 14, "text-anchor": "middle", text: String(l)}));
      roles.forEach((role, j) => {
        const r = rows.find(x => x.layer === l && x.role === role);
        if (!r || r.share == null) return;
        root.append(svg("rect", {x: sx(i) - bw / 2, y: sy(acc + r.share), width: bw, height: sy(acc) - sy(acc + r.share),
          fill: HV.PALETTE[j % 10], class: "bar", "data-layer": l, "data-role": role,
          onmouseenter: e => { say(r); HV.showTip(e, `layer ${l}, ${role}\nshare ${HV.fmt(r.share)}`); }, onmouseleave: HV.hideTip}));
        acc += r.share;
      });
    });
    chartBox.replaceChildren(root);
  }
  draw();
})();
