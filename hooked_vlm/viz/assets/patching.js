"use strict";
// Patching-sweep view. Data (hooked_vlm/viz/frames.py): rows of patching_sweep (batch, layer, logit_diff,
// clean_logit_diff, source_logit_diff, flipped, similarity, clean_similarity, ...), site, cumulative.
(() => {
  const D = HV.data, el = HV.el, svg = HV.svg;
  const batches = [...new Set(D.rows.map(r => r.batch))];
  const S = {batch: batches[0]};
  const pick = el("select", {id: "batch"}, batches.map(b => el("option", {value: b, text: `item ${b}`})));
  const readout = el("div", {id: "readout", class: "note", style: "min-height:1.4em;color:#222;font-size:12px"});
  const charts = el("div", {class: "main"});
  const cols = Object.keys(D.rows[0]).map(k => ({key: k, label: k.replace(/_/g, " ")}));
  document.getElementById("app").append(
    el("div", {class: "controls"}, batches.length > 1 ? el("label", {}, "batch item", pick) : null,
      el("span", {class: "note", text: `site ${D.site}${D.cumulative ? ", each layer and all later ones patched" : ""}`})),
    charts, readout, HV.table(cols, D.rows, r => say(r)));
  pick.addEventListener("change", () => { S.batch = +pick.value; draw(); });
  const say = r => { readout.textContent = `layer ${r.layer}: logit diff ${HV.fmt(r.logit_diff)} (clean ${HV.fmt(r.clean_logit_diff)}, ` +
    `source ${HV.fmt(r.source_logit_diff)}), similarity to the source ${HV.fmt(r.similarity)} (clean ${HV.fmt(r.clean_similarity)})` +
    (r.flipped ? ", sign flipped" : ""); };

  function chart(rows, key, refs, ylabel, title) {
    const box = {left: 56, top: 24, width: 360, height: 190};
    const root = svg("svg", {width: 440, height: 260, id: `chart-${key}`});
    const xs = rows.map(r => r.layer), vals = rows.map(r => r[key]).concat(refs.map(([k]) => rows[0][k]));
    let lo = Math.min(...vals), hi = Math.max(...vals);
    if (key === "similarity") { lo = 0; hi = Math.max(1, hi); }
    if (lo === hi) { lo -= 1; hi += 1; }
    const {sx, sy} = HV.axes(root, box, Math.min(...xs), Math.max(...xs), lo, hi, xs, "patched layer", ylabel);
    root.append(svg("text", {x: box.left, y: 14, text: title}));
    refs.forEach(([k, label, colour]) => {
      const y = sy(rows[0][k]);
      root.append(svg("line", {x1: box.left, x2: box.left + box.width, y1: y, y2: y, stroke: colour, "stroke-dasharray": "5 4"}),
                  svg("text", {x: box.left + box.width - 2, y: y - 4, "text-anchor": "end", fill: colour, text: label}));
    });
    root.append(svg("polyline", {fill: "none", stroke: "#4e79a7", "stroke-width": 2,
      points: rows.map(r => `${sx(r.layer)},${sy(r[key])}`).join(" ")}));
    rows.forEach(r => root.append(svg("circle", {cx: sx(r.layer), cy: sy(r[key]), r: 5, fill: r.flipped ? "#e15759" : "#4e79a7",
      class: "point", "data-layer": r.layer, "data-key": key,
      onmouseenter: e => { say(r); HV.showTip(e, `layer ${r.layer}\n${key}: ${HV.fmt(r[key])}`); }, onmouseleave: HV.hideTip})));
    return root;
  }
  function draw() {
    const rows = D.rows.filter(r => r.batch === S.batch).sort((a, b) => a.layer - b.layer);
    charts.replaceChildren(
      chart(rows, "logit_diff", [["clean_logit_diff", "clean", "#888"], ["source_logit_diff", "source", "#59a14f"]],
            "logit diff (A - B)", "logit difference after patching (red: sign flipped)"),
      chart(rows, "similarity", [["clean_similarity", "clean", "#888"]], "similarity to the source",
            "next-token distribution similarity to the source run"));
  }
  draw();
})();
