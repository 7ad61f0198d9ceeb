"use strict";
// Attention view. Data (hooked_vlm/viz/attention.py): layers, n_heads, queries (positions), first_query, seq_len,
// pattern (uint8 [layer, query, head, key], scaled by row_max [layer, query, head]), labels, roles, cells, grid, image.
(() => {
  const D = HV.data, el = HV.el;
  const L = D.layers.length, H = D.n_heads, Q = D.queries.length, P = D.seq_len;
  const pat = HV.u8(D.pattern), rmax = HV.f32(D.row_max);
  const qIndex = new Map(D.queries.map((p, i) => [p, i]));
  const S = {layer: L - 1, head: -1, q: qIndex.get(D.first_query)};
  const imageKeys = D.cells.map((c, i) => (c ? i : -1)).filter(i => i >= 0);

  function w(l, q, h, k) {
    if (h < 0) { let s = 0; for (let j = 0; j < H; j++) s += w(l, q, j, k); return s / H; }
    const r = (l * Q + q) * H + h;
    return pat[r * P + k] / 255 * rmax[r];
  }
  const headName = h => (h < 0 ? "mean over heads" : `head ${h}`);
  const qPos = () => D.queries[S.q];

  const layer = el("input", {type: "range", id: "layer", min: 0, max: L - 1, step: 1, value: L - 1});
  const layerLabel = el("span", {id: "layer-label"});
  const readout = el("div", {id: "readout", class: "note", style: "min-height:2.6em;font-size:12px;color:#222"});
  const summary = el("div", {id: "summary", class: "note"});
  const legend = el("div", {class: "legend", id: "legend"});
  const heads = el("div", {class: "heads", id: "heads", style: `grid-template-columns:repeat(${Math.min(H + 1, 6)},110px)`});
  const strip = el("div", {class: "strip", id: "strip"});
  const main = D.grid ? HV.patchGrid(D.grid, D.image, D.cells, 384, (ev, k, e) => {
    if (ev === "mouseenter" || ev === "mousemove") { showKey(k); HV.showTip(e, readout.textContent); }
    else if (ev === "mouseleave") HV.hideTip();
  }) : null;
  if (main) main.wrap.id = "attn-grid";
  document.getElementById("app").append(
    el("div", {class: "controls"}, el("label", {}, "layer", layer, layerLabel),
      el("span", {id: "query-label"}), el("span", {id: "head-label"})),
    el("div", {class: "main"},
      el("div", {style: "width:384px"}, main ? main.wrap : el("p", {class: "note", text: "no image in this input"}), legend, summary),
      el("div", {}, el("div", {class: "note", text: "heads of this layer (click one; the first is their mean):"}), heads, readout)),
    el("div", {class: "note", text: "prompt tokens, coloured by the attention they receive from the query (outlined); " +
      "click a bold token to make it the query"}), strip);
  layer.addEventListener("input", () => { S.layer = +layer.value; draw(); });

  const chips = new Map();
  for (let p = 0; p < P; p++) {
    if (D.roles[p] === "pad") continue;
    if (D.roles[p] === "image") {
      let q = p;
      while (q + 1 < P && D.roles[q + 1] === "image") q++;
      const chip = el("span", {class: "chip image-run", "data-pos": p, text: `[image: ${q - p + 1} tokens]`});
      const from = p, to = q;
      chip.addEventListener("mouseenter", () => {
        let s = 0; for (let k = from; k <= to; k++) s += w(S.layer, S.q, S.head, k);
        readout.textContent = `image tokens ${from}-${to}: total weight ${HV.fmt(s)}`;
      });
      strip.append(chip);
      p = q;
      continue;
    }
    const isQ = qIndex.has(p);
    const chip = el("span", {class: "chip", "data-pos": p, text: D.labels[p], style: isQ ? "font-weight:bold" : null,
      title: isQ ? "click: make this the query" : "not a query position of this view (queries=)"});
    chip.addEventListener("mouseenter", () => showKey(p));
    if (isQ) chip.addEventListener("click", () => { S.q = qIndex.get(p); draw(); });
    chips.set(p, chip);
    strip.append(chip);
  }

  function showKey(k) {
    const lab = D.labels[k], x = k > qPos() ? "0 (a later position: causal mask)" : HV.fmt(w(S.layer, S.q, S.head, k));
    readout.textContent = `query '${D.labels[qPos()]}' (position ${qPos()}) -> key '${lab}' (position ${k}): ` +
      `weight ${x}   [layer ${D.layers[S.layer]}, ${headName(S.head)}]`;
    readout.dataset.key = k;
    readout.dataset.weight = w(S.layer, S.q, S.head, k);
  }
  function colourGrid(g, h) {
    let hi = 0;
    for (const k of imageKeys) hi = Math.max(hi, w(S.layer, S.q, h, k));
    g.cells.forEach((d, k) => {
      d.dataset.value = String(w(S.layer, S.q, h, k));
      d.style.background = HV.viridis(hi > 0 ? w(S.layer, S.q, h, k) / hi : 0, D.image ? 0.7 : 1);
    });
    return hi;
  }
  function draw() {
    layerLabel.textContent = ` ${D.layers[S.layer]}`;
    document.getElementById("query-label").textContent = `query: '${D.labels[qPos()]}' (position ${qPos()})`;
    document.getElementById("head-label").textContent = headName(S.head);
    heads.replaceChildren(...[-1, ...Array.from({length: H}, (_, h) => h)].map(h => {
      const box = el("div", {class: "head" + (h === S.head ? " sel" : ""), "data-head": h, onclick: () => { S.head = h; draw(); }});
      if (D.grid) {
        const g = HV.patchGrid(D.grid, D.image, D.cells, 100, () => {});
        colourGrid(g, h);
        box.append(g.wrap);
      }
      let img = 0; for (const k of imageKeys) img += w(S.layer, S.q, h, k);
      box.append(el("div", {text: `${headName(h)} · image ${HV.fmt(img)}`}));
      return box;
    }));
    let hi = 0;
    if (main) hi = colourGrid(main, S.head);
    HV.legend(legend, `attention weight from '${D.labels[qPos()]}', layer ${D.layers[S.layer]}, ${headName(S.head)}`, 0, hi);
    let img = 0, txt = 0, tmax = 0;
    for (let k = 0; k < P; k++) {
      const x = w(S.layer, S.q, S.head, k);
      if (D.cells[k]) img += x; else if (D.roles[k] !== "pad") { txt += x; if (D.roles[k] !== "image") tmax = Math.max(tmax, x); }
    }
    summary.textContent = `the query's attention: ${HV.fmt(img)} on the image patches drawn here, ${HV.fmt(txt)} on the other positions`;
    chips.forEach((chip, p) => {
      chip.classList.toggle("query", p === qPos());
      chip.style.background = p > qPos() ? "#eee" : HV.viridis(tmax > 0 ? w(S.layer, S.q, S.head, p) / tmax : 0, 0.55);
    });
    if (readout.dataset.key != null) showKey(+readout.dataset.key);
  }
  draw();
})();
