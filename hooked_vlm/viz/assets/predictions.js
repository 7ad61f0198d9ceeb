"use strict";
// Prediction comparison. Data (hooked_vlm/viz/predictions.py): runs, ref, ref_probs, ref_logit_change, top (tokens
// [run, k]), top_probs, highlight ({run: [[r, c], ...]}), grid, image.
(() => {
  const D = HV.data, el = HV.el, svg = HV.svg;
  const rows = D.runs.map((name, i) => ({run: name, top: D.top[i][0], top_prob: D.top_probs[i][0], ref_prob: D.ref_probs[i],
    ref_logit_change: D.ref_logit_change[i]}));
  const bars = el("div", {id: "bars"});
  const side = el("div", {style: "width:260px"});
  const cols = [{key: "run", label: "run"}, {key: "top", label: "top token"}, {key: "top_prob", label: "p(top)"},
    {key: "ref_prob", label: `p('${D.ref}')`}, {key: "ref_logit_change", label: `logit('${D.ref}') - clean`}];
  document.getElementById("app").append(el("div", {class: "main"},
    el("div", {}, HV.table(cols, rows, (_, i) => show(i)), el("p", {class: "note", text: "hover a run for its top tokens"}), bars), side));
  function show(i) {
    const box = {left: 90, top: 24, width: 300, height: 22 * D.top[i].length};
    const root = svg("svg", {width: 420, height: box.height + 40, id: "bars-svg", "data-run": D.runs[i]});
    root.append(svg("text", {x: 4, y: 14, text: `${D.runs[i]}: next-token probabilities (top ${D.top[i].length})`}));
    D.top[i].forEach((t, j) => {
      const p = D.top_probs[i][j], y = box.top + 22 * j;
      root.append(svg("text", {x: box.left - 6, y: y + 14, "text-anchor": "end", text: t}),
        svg("rect", {x: box.left, y, width: Math.max(1, p * box.width), height: 16, fill: t === D.ref ? "#e15759" : "#4e79a7",
          class: "bar", "data-token": t, "data-prob": p, onmouseenter: e => HV.showTip(e, `'${t}' ${HV.fmt(p)}`), onmouseleave: HV.hideTip}),
        svg("text", {x: box.left + p * box.width + 4, y: y + 13, text: HV.fmt(p)}));
    });
    bars.replaceChildren(root);
    side.replaceChildren();
    const marks = D.highlight && D.highlight[D.runs[i]];
    if (D.grid && marks) {
      const cells = marks.map(rc => rc);
      const g = HV.patchGrid(D.grid, D.image, cells, 240, () => {});
      g.cells.forEach(d => { d.style.background = "rgba(225,87,89,.55)"; });
      side.append(g.wrap, el("p", {class: "note", text: `${marks.length} patches edited in '${D.runs[i]}' (red)`}));
    }
  }
  show(D.runs.length > 1 ? 1 : 0);
})();
