"use strict";
// Attribution-graph view. Data (hooked_vlm/viz/graph.py): n_layers, n_pos, position, labels, roles, cells, grid,
// image, logit_labels, logit_probs; per drawn node (local index j): node (graph index), node_kind (0 feature, 1 error,
// 2 input, 3 logit), layer, pos, feature (logit: its index), activation, value, influence; edges src / dst (local
// indices) / weight = adjacency[node[dst], node[src]]; n_edges (before max_edges).
(() => {
  const D = HV.data, el = HV.el, svg = HV.svg;
  const node = HV.i32(D.node), kind = HV.u8(D.node_kind), layer = HV.i32(D.layer), pos = HV.i32(D.pos);
  const feat = HV.i32(D.feature), act = HV.f32(D.activation), value = HV.f32(D.value), infl = HV.f32(D.influence);
  const src = HV.i32(D.src), dst = HV.i32(D.dst), wt = HV.f32(D.weight);
  const N = node.length, L = D.n_layers, KIND = ["feature", "error", "input", "logit"];
  const KIND_COLOUR = ["#4e79a7", "#9c9c9c", "#59a14f", "#f28e2b"];
  const incoming = Array.from({length: N}, () => []), outgoing = Array.from({length: N}, () => []);
  for (let e = 0; e < wt.length; e++) { incoming[dst[e]].push([src[e], wt[e]]); outgoing[src[e]].push([dst[e], wt[e]]); }
  const inputOf = new Map();  // position -> local index of its input node
  for (let j = 0; j < N; j++) if (kind[j] === 2) inputOf.set(pos[j], j);
  const S = {sel: -1};

  function name(j) {
    const p = pos[j], tok = D.labels[p];
    if (kind[j] === 0) return `feature ${feat[j]} of layer ${layer[j]} at position ${p} '${tok}'`;
    if (kind[j] === 1) return `error node of layer ${layer[j]} at position ${p} '${tok}'`;
    if (kind[j] === 2) return `input: position ${p} '${tok}'`;
    return `logit '${D.logit_labels[feat[j]]}' (p=${HV.fmt(D.logit_probs[feat[j]])}) at position ${p}`;
  }
  function details(j) {
    let s = name(j);
    if (kind[j] === 0) s += `\nactivation ${HV.fmt(act[j])}, pre-activation ${HV.fmt(value[j])}`;
    if (kind[j] === 3) s += `\nlogit value ${HV.fmt(value[j])} (before any soft-cap)`;
    s += `\ninfluence on the logits ${HV.fmt(infl[j])}`;
    if (S.sel >= 0 && j !== S.sel) {
      const a = edgeIn(j), b = edgeOut(j);
      if (a !== 0) s += `\ndirect effect on the selected node: ${HV.fmt(a)}`;
      if (b !== 0) s += `\ndirect effect of the selected node on it: ${HV.fmt(b)}`;
    }
    return s;
  }
  // direct effect of j on the selected node (j a source) and of the selected node on j (j a target)
  let inW = new Map(), outW = new Map();
  const edgeIn = j => inW.get(j) || 0, edgeOut = j => outW.get(j) || 0;

  // diverging colour: -1 blue, 0 white, +1 red
  function diverging(t, alpha) {
    t = Math.max(-1, Math.min(1, t));
    const end = t >= 0 ? [178, 24, 43] : [33, 102, 172], f = Math.abs(t);
    const c = end.map(v => Math.round(255 + f * (v - 255)));
    return alpha == null ? `rgb(${c})` : `rgba(${c},${alpha})`;
  }
  function divergingLegend(box, label, hi) {
    const stops = Array.from({length: 11}, (_, i) => `${diverging(i / 5 - 1)} ${i * 10}%`).join(",");
    box.replaceChildren(el("div", {class: "label", text: label}),
      el("div", {class: "bar", style: `background:linear-gradient(to right,${stops})`}),
      el("div", {class: "ticks"}, el("span", {text: HV.fmt(-hi)}), el("span", {text: "0"}), el("span", {text: HV.fmt(hi)})));
  }

  // ---------------------------------------------------------------- layout
  const cols = [];  // positions with a column in the graph: text tokens, and image positions holding a feature / error
  for (let p = 0; p < D.n_pos; p++) {
    let used = D.roles[p] !== "image" || p === D.position;
    for (let j = 0; j < N && !used; j++) used = pos[j] === p && kind[j] < 2;
    if (used) cols.push(p);
  }
  const colOf = new Map(cols.map((p, i) => [p, i]));
  const cellCount = new Map();
  const key = j => `${kind[j] === 3 ? L : kind[j] === 2 ? -1 : layer[j]}:${pos[j]}`;
  for (let j = 0; j < N; j++) if (colOf.has(pos[j])) cellCount.set(key(j), (cellCount.get(key(j)) || 0) + 1);
  const colMax = new Array(cols.length).fill(1);  // the most nodes one (row, column) cell holds, per column
  cellCount.forEach((n, k) => { const c = colOf.get(+k.split(":")[1]); colMax[c] = Math.max(colMax[c], n); });
  const DX = 9, rowH = Math.max(26, Math.min(48, 640 / (L + 2)));
  const colW = colMax.map(n => Math.max(44, n * DX + 10)), colX = [];
  const left = 70, top = 40, bottom = 90;
  colW.reduce((x, w, i) => { colX[i] = x; return x + w; }, left);
  const right = left + colW.reduce((a, b) => a + b, 0);
  const W = right + 20, H = top + (L + 2) * rowH + bottom;
  const rowY = r => top + (L + 1 - r) * rowH;  // r = 0 inputs, 1..L layers 0..L-1, L + 1 logits
  const root = svg("svg", {id: "graph", width: W, height: H, viewBox: `0 0 ${W} ${H}`});
  const edgeLayer = svg("g", {id: "edges"}), nodeLayer = svg("g", {id: "nodes"});
  root.append(svg("rect", {x: 0, y: 0, width: W, height: H, fill: "#fff", id: "background"}));
  for (let r = 0; r <= L + 1; r++) {
    const lab = r === 0 ? "inputs" : r === L + 1 ? "logits" : `layer ${r - 1}`;
    root.append(svg("line", {x1: left - 4, x2: W - 10, y1: rowY(r), y2: rowY(r), stroke: "#eee"}),
                svg("text", {x: left - 8, y: rowY(r) + 4, "text-anchor": "end", text: lab}));
  }
  root.append(svg("text", {x: (left + right) / 2, y: H - 6, "text-anchor": "middle",
    text: "position (text tokens; image positions only where a feature or error node sits: the patches are on the image)"}));
  root.append(edgeLayer, nodeLayer);
  const xy = new Array(N).fill(null), shapes = new Map();
  const placed = new Map();
  let maxInfl = 1e-12;
  for (let j = 0; j < N; j++) if (kind[j] === 0) maxInfl = Math.max(maxInfl, infl[j]);
  for (let j = 0; j < N; j++) {
    if (!colOf.has(pos[j])) continue;
    const k = key(j), n = cellCount.get(k), i = placed.get(k) || 0;
    placed.set(k, i + 1);
    const c = colOf.get(pos[j]), cw = colW[c];
    const r = kind[j] === 3 ? L + 1 : kind[j] === 2 ? 0 : layer[j] + 1;
    const x = colX[c] + cw / 2 + (i - (n - 1) / 2) * DX, y = rowY(r);
    xy[j] = [x, y];
    const rad = kind[j] === 0 ? 3 + 4 * Math.sqrt(Math.min(1, Math.max(0, infl[j]) / maxInfl)) : 5;
    let shape;
    if (kind[j] === 0) shape = svg("circle", {cx: x, cy: y, r: rad});
    else if (kind[j] === 1) shape = svg("rect", {x: x - 4, y: y - 4, width: 8, height: 8});
    else if (kind[j] === 2) shape = svg("rect", {x: x - cw / 2 + 3, y: y - 8, width: cw - 6, height: 16, rx: 3});
    else shape = svg("path", {d: `M${x - 7},${y + 5} L${x + 7},${y + 5} L${x},${y - 7} Z`});
    shape.setAttribute("class", `node ${KIND[kind[j]]}`);
    shape.setAttribute("data-node", node[j]);
    shape.setAttribute("data-kind", KIND[kind[j]]);
    shape.addEventListener("click", e => { e.stopPropagation(); select(j); });
    shape.addEventListener("mousemove", e => HV.showTip(e, details(j)));
    shape.addEventListener("mouseleave", HV.hideTip);
    shapes.set(j, shape);
    nodeLayer.append(shape);
    if (kind[j] === 2) nodeLayer.append(svg("text", {x, y: y + 22, "text-anchor": "end", class: "tok",
      transform: `rotate(-40 ${x} ${y + 22})`, text: D.labels[pos[j]]}));
    if (kind[j] === 3) nodeLayer.append(svg("text", {x, y: y - 10, "text-anchor": "middle", text: D.logit_labels[feat[j]]}));
  }
  root.addEventListener("click", () => select(-1));

  // ---------------------------------------------------------------- page
  const legendIn = el("div", {class: "legend", id: "legend-in"}), legendOut = el("div", {class: "legend", id: "legend-out"});
  const summary = el("div", {id: "summary", class: "note"});
  const detailBox = el("div", {id: "details", class: "panel"});
  const clear = el("button", {id: "clear", text: "clear selection", onclick: () => select(-1)});
  const img = D.grid ? HV.patchGrid(D.grid, D.image, D.cells, 384, (ev, p, e) => {
    const j = inputOf.get(p);
    if (ev === "click") { e.stopPropagation(); select(j); }
    else if (ev === "mouseleave") HV.hideTip();
    else HV.showTip(e, details(j));
  }) : null;
  if (img) {
    img.wrap.id = "graph-image";
    img.cells.forEach((d, p) => d.setAttribute("data-node", node[inputOf.get(p)]));
  }
  const dropped = D.n_edges - wt.length;
  const scroller = el("div", {id: "graph-scroll", style: "max-width:720px;max-height:680px;overflow:auto;border:1px solid #ddd"}, root);
  document.getElementById("app").append(
    el("div", {class: "controls"}, el("span", {id: "selected-label"}), clear),
    el("div", {class: "main"},
      el("div", {style: "width:384px"}, img ? img.wrap : el("p", {class: "note", text: "no image in this input"}),
        legendIn, legendOut, summary),
      scroller),
    el("div", {class: "note", text: "click a node (or a patch) to light up what feeds it and what it drives; circles: " +
      "transcoder features (size: influence), squares: error nodes, boxes: input tokens, triangles: logits. Nodes: " +
      `circuit-tracer's pruning (node threshold ${D.node_threshold}); edges: the adjacency's direct effects between ` +
      `drawn nodes (${wt.length}${dropped > 0 ? `, ${dropped} weakest left out` : ""}).`}),
    detailBox);

  // ---------------------------------------------------------------- selection
  function colourAll() {
    let hiIn = 0, hiOut = 0;
    inW.forEach(v => { hiIn = Math.max(hiIn, Math.abs(v)); });
    outW.forEach(v => { hiOut = Math.max(hiOut, Math.abs(v)); });
    shapes.forEach((s, j) => {
      const a = edgeIn(j), b = edgeOut(j), lit = S.sel >= 0 && (a !== 0 || b !== 0);
      s.setAttribute("data-in", String(a));
      s.setAttribute("data-out", String(b));
      s.classList.toggle("lit", lit);
      s.classList.toggle("sel", j === S.sel);
      s.classList.toggle("faded", S.sel >= 0 && !lit && j !== S.sel);
      s.setAttribute("fill", j === S.sel ? "#222" : S.sel < 0 ? KIND_COLOUR[kind[j]] :
        a !== 0 ? diverging(a / hiIn) : b !== 0 ? diverging(b / hiOut) : KIND_COLOUR[kind[j]]);
      s.setAttribute("stroke", lit || j === S.sel ? "#333" : "none");
    });
    if (img) {
      let hi = 0;
      img.cells.forEach((d, p) => { hi = Math.max(hi, Math.abs(S.sel < 0 ? infl[inputOf.get(p)] : edgeIn(inputOf.get(p)))); });
      img.cells.forEach((d, p) => {
        const j = inputOf.get(p), v = S.sel < 0 ? infl[j] : edgeIn(j);
        d.dataset.value = String(v);
        d.classList.toggle("lit", S.sel >= 0 && v !== 0);
        d.classList.toggle("sel", j === S.sel);
        d.style.background = S.sel < 0 ? HV.viridis(hi > 0 ? v / hi : 0, D.image ? 0.6 : 1) :
          v === 0 ? "transparent" : diverging(v / (hiIn || 1), 0.8);
      });
      if (S.sel < 0) HV.legend(legendIn, "patches: influence on the logits (through every path)", 0, hi);
    }
    if (S.sel >= 0) {
      divergingLegend(legendIn, "direct effect on the selected node (patches, tokens, earlier nodes)", hiIn);
      divergingLegend(legendOut, "direct effect of the selected node (later nodes, logits)", hiOut);
    } else legendOut.replaceChildren();
  }
  function drawEdges() {
    edgeLayer.replaceChildren();
    if (S.sel < 0 || !xy[S.sel]) return;
    const [x0, y0] = xy[S.sel];
    let hi = 0;
    for (const [, w] of incoming[S.sel].concat(outgoing[S.sel])) hi = Math.max(hi, Math.abs(w));
    const line = (j, w, dir) => {
      if (!xy[j]) return;
      edgeLayer.append(svg("line", {x1: xy[j][0], y1: xy[j][1], x2: x0, y2: y0, class: `edge ${dir}`,
        stroke: diverging(w / hi, 0.75), "stroke-width": 0.5 + 4 * Math.abs(w) / hi}));
    };
    for (const [j, w] of incoming[S.sel]) line(j, w, "in");
    for (const [j, w] of outgoing[S.sel]) line(j, w, "out");
  }
  function listOf(pairs, title) {
    const rows = pairs.slice().sort((a, b) => Math.abs(b[1]) - Math.abs(a[1])).slice(0, 12);
    if (!rows.length) return el("p", {class: "note", text: `${title}: none among the drawn nodes`});
    return el("div", {}, el("div", {class: "label", text: title}), el("table", {},
      el("tr", {}, el("th", {text: "node"}), el("th", {text: "direct effect"})),
      rows.map(([j, w]) => el("tr", {"data-node": node[j], onclick: () => select(j), style: "cursor:pointer"},
        el("td", {text: name(j)}), el("td", {text: HV.fmt(w)})))));
  }
  function select(j) {
    S.sel = j == null ? -1 : j;
    inW = new Map(S.sel < 0 ? [] : incoming[S.sel]);
    outW = new Map(S.sel < 0 ? [] : outgoing[S.sel]);
    const label = document.getElementById("selected-label");
    label.textContent = S.sel < 0 ? "nothing selected: the patches show their influence on the logits" : `selected: ${name(S.sel)}`;
    label.dataset.node = S.sel < 0 ? "" : String(node[S.sel]);
    colourAll();
    drawEdges();
    let imgIn = 0, txtIn = 0;
    inW.forEach((v, i) => { if (kind[i] === 2) { if (D.roles[pos[i]] === "image") imgIn += v; else txtIn += v; } });
    summary.textContent = S.sel < 0 ? `${D.n_pos} inputs, ${N - D.n_pos} other nodes drawn` :
      `direct effect from image patches ${HV.fmt(imgIn)}, from text tokens ${HV.fmt(txtIn)}`;
    detailBox.replaceChildren(S.sel < 0 ? el("p", {class: "note", text: "click a node for its edges"}) :
      el("div", {}, el("pre", {text: details(S.sel)}), listOf(incoming[S.sel], "strongest sources (what feeds it)"),
        listOf(outgoing[S.sel], "strongest targets (what it drives)")));
  }
  select(-1);
  const q = colOf.get(D.position);  // start scrolled to the answering position (the logits' column)
  if (q != null) scroller.scrollLeft = Math.max(0, colX[q] + colW[q] - 700);
})();
