"use strict";
// Logit-lens view. Data (hooked_vlm/viz/lens.py): layers, k, rows (positions), cells ([r, c] | null per row),
// grid, image, labels / roles per position, vocab_strings, vocabs [{name, top, top_prob, targets, target_prob, target_rank}].
(() => {
  const D = HV.data, el = HV.el;
  function rankArray(v) {  // uint16 with 65535 = outside the readout vocabulary, or int32 with -1
    if (v.target_rank == null) return null;
    if (v.rank_dtype !== "u16") return HV.i32(v.target_rank);
    return Int32Array.from(HV.u16(v.target_rank), x => (x === 65535 ? -1 : x));
  }
  const L = D.layers.length, K = D.k, N = D.rows.length;
  const V = D.vocabs.map(v => ({name: v.name, top: v.top_dtype === "u16" ? HV.u16(v.top) : HV.i32(v.top), prob: HV.probs(v.top_prob), targets: v.targets,
    tprob: HV.probs(v.target_prob), trank: rankArray(v)}));
  const rowOf = new Map(D.rows.map((p, i) => [p, i]));
  const S = {vocab: 0, layer: L - 1, by: "top", search: null, row: null, pinned: false};
  const tok = i => D.vocab_strings[i];
  const nT = () => V[S.vocab].targets.length;

  function value(l, r) {  // the colouring value of row r at layer index l (NaN = not available)
    const v = V[S.vocab];
    if (S.by === "top") return v.prob[(l * N + r) * K];
    if (S.by === "search") {
      for (let j = 0; j < K; j++) if (v.top[(l * N + r) * K + j] === S.search) return v.prob[(l * N + r) * K + j];
      return NaN;
    }
    const t = +S.by.slice(2);
    if (S.by[0] === "p") return v.tprob[(l * N + r) * nT() + t];
    const rank = v.trank[(l * N + r) * nT() + t];
    return rank < 0 ? NaN : rank;
  }
  // rows the colour scale spans: the image patches when there is a grid (prompt tokens are clipped to it)
  const scaleRows = D.grid ? D.cells.map((c, i) => (c ? i : -1)).filter(i => i >= 0) : D.rows.map((_, i) => i);
  const scales = new Map();  // the scale depends on what colours the grid, not on the layer: computed once each
  function scale() {
    const key = `${S.vocab}|${S.by}|${S.search}`;
    if (!scales.has(key)) scales.set(key, computeScale());
    return scales.get(key);
  }
  function computeScale() {  // [lo, hi] over every layer, so that moving the slider compares like with like
    let hi = 0;
    for (let l = 0; l < L; l++) for (const r of scaleRows) { const x = value(l, r); if (x > hi) hi = x; }
    return S.by[0] === "r" ? [0, Math.max(1, hi)] : [0, hi > 0 ? hi : 1];
  }
  function colour(x, sc, alpha) {
    if (Number.isNaN(x)) return null;
    if (S.by[0] === "r") return HV.viridis(1 - Math.log1p(x) / Math.log1p(sc[1]), alpha);  // rank 0 = brightest
    return HV.viridis(x / sc[1], alpha);
  }
  function byLabel() {
    if (S.by === "top") return "top-1 probability";
    if (S.by === "search") return `p('${tok(S.search)}') where it is in the top ${K} (hatched: not in the top ${K})`;
    const t = tok(V[S.vocab].targets[+S.by.slice(2)]);
    return S.by[0] === "p" ? `p('${t}')` : `rank of '${t}' (0 = top token; log scale)`;
  }

  // --- layout
  const layer = el("input", {type: "range", id: "layer", min: 0, max: L - 1, step: 1, value: L - 1});
  const layerLabel = el("span", {id: "layer-label"});
  const by = el("select", {id: "colour-by"});
  const search = el("input", {id: "search", type: "search", placeholder: "token search", list: "vocab-list", size: 14});
  const searchMsg = el("span", {id: "search-msg", class: "msg"});
  const vocabBox = el("span", {id: "vocab"});
  const controls = el("div", {class: "controls"},
    el("label", {}, "layer", layer, layerLabel), el("label", {}, "colour by", by),
    el("label", {}, "token", search, searchMsg), vocabBox,
    el("datalist", {id: "vocab-list"}, D.vocab_strings.map(s => el("option", {value: s}))));
  const legend = el("div", {class: "legend", id: "legend"});
  const panel = el("div", {class: "panel", id: "panel"});
  const strip = el("div", {class: "strip", id: "strip"});
  let grid = null;
  if (D.grid) grid = HV.patchGrid(D.grid, D.image, D.cells, 384, onCell);
  const left = el("div", {class: "left", style: "width:384px"}, grid ? grid.wrap : el("p", {class: "note", text: "no image rows in this lens"}),
    legend, el("p", {class: "note", text: D.layer_note + ". Hover a patch or a token for its readout at every layer; click to pin it."}));
  document.getElementById("app").append(controls, el("div", {class: "main"}, left, panel), strip);
  if (V.length > 1) {
    vocabBox.append("vocabulary ", ...V.map((v, i) => el("label", {}, el("input", {type: "radio", name: "vocab",
      id: `vocab-${v.name}`, value: i, checked: i === 0, onchange: () => { S.vocab = i; fillBy(); draw(); }}), v.name)));
  }
  function fillBy() {
    const opts = [["top", "top-1 probability"]];
    V[S.vocab].targets.forEach((t, i) => { opts.push([`p:${i}`, `p('${tok(t)}')`]); opts.push([`r:${i}`, `rank of '${tok(t)}'`]); });
    if (S.search != null) opts.push(["search", `searched: '${tok(S.search)}'`]);
    if (!opts.some(o => o[0] === S.by)) S.by = "top";
    by.replaceChildren(...opts.map(([v, t]) => el("option", {value: v, text: t, selected: v === S.by})));
  }
  by.addEventListener("change", () => { S.by = by.value; draw(); });
  layer.addEventListener("input", () => { S.layer = +layer.value; draw(); });
  search.addEventListener("change", () => {
    const q = search.value.trim();
    if (!q) { S.search = null; searchMsg.textContent = ""; fillBy(); draw(); return; }
    const bare = s => s.replace(/^[\u2581\u0120]/, "");
    let i = D.vocab_strings.indexOf(q);
    if (i < 0) i = D.vocab_strings.findIndex(s => bare(s) === bare(q));
    if (i < 0) { searchMsg.textContent = `'${q}' is not in the top ${K} of any row at any layer`; return; }
    searchMsg.textContent = "";
    S.search = i; S.by = "search"; fillBy(); draw();
  });

  // --- prompt strip: image tokens of one image collapse into one chip
  const chips = new Map();
  for (let p = 0; p < D.labels.length; p++) {
    if (D.roles[p] === "pad") continue;
    if (D.roles[p] === "image") {
      let q = p;
      while (q + 1 < D.labels.length && D.roles[q + 1] === "image") q++;
      strip.append(el("span", {class: "chip image-run", title: `positions ${p}-${q}: hover the patches on the image`,
        text: `[image: ${q - p + 1} tokens]`}));
      p = q;
      continue;
    }
    const r = rowOf.get(p);
    const chip = el("span", {class: "chip" + (r == null ? " no-readout" : ""), "data-pos": p, text: D.labels[p],
      title: r == null ? "not in the lens span (run logit_lens(span=\"all\") for prompt readouts)" : `position ${p}`});
    if (r != null) {
      chip.addEventListener("mouseenter", () => hover(r));
      chip.addEventListener("click", () => pin(r));
      chips.set(r, chip);
    }
    strip.append(chip);
  }

  function onCell(ev, i, e) {
    if (ev === "mouseenter") hover(i);
    else if (ev === "mousemove") HV.showTip(e, tipText(i));
    else if (ev === "mouseleave") HV.hideTip();
    else if (ev === "click") pin(i);
  }
  function tipText(r) {
    const x = value(S.layer, r), v = V[S.vocab], j = (S.layer * N + r) * K;
    return `${D.labels[D.rows[r]]}  layer ${D.layers[S.layer]}\ntop: '${tok(v.top[j])}' ${HV.fmt(v.prob[j])}\n${byLabel()}: ` +
      (Number.isNaN(x) ? "n/a" : S.by[0] === "r" ? String(x) : HV.fmt(x));
  }
  function hover(r) { if (!S.pinned) { S.row = r; drawPanel(); mark(); } }
  function pin(r) { S.pinned = !(S.pinned && S.row === r); S.row = r; drawPanel(); mark(); }
  function mark() {
    if (grid) grid.cells.forEach((d, i) => d.classList.toggle("sel", i === S.row));
    chips.forEach((c, i) => c.classList.toggle("sel", i === S.row));
  }

  function drawPanel() {
    const r = S.row;
    if (r == null) { panel.replaceChildren(el("p", {class: "note", text: "hover a patch or a prompt token"})); return; }
    const v = V[S.vocab], p = D.rows[r], rc = D.cells[r];
    const title = `${rc ? `patch (${rc[0]}, ${rc[1]}) · ` : ""}position ${p} · ${D.labels[p]} · ${v.name} vocabulary` +
      (S.pinned ? " · pinned" : "");
    const head = el("tr", {}, el("th", {text: "layer"}), Array.from({length: K}, (_, j) => el("th", {text: `top ${j + 1}`})),
      v.targets.map(t => el("th", {text: `p('${tok(t)}') / rank`})));
    const rows = D.layers.map((layerNo, l) => el("tr", {"data-layer": layerNo, class: l === S.layer ? "current" : null},
      el("td", {text: String(layerNo)}),
      Array.from({length: K}, (_, j) => {
        const idx = (l * N + r) * K + j;
        return el("td", {"data-k": j}, el("span", {class: "t", text: tok(v.top[idx])}), el("span", {class: "p", text: HV.fmt(v.prob[idx])}));
      }),
      v.targets.map((_, t) => {
        const idx = (l * N + r) * v.targets.length + t;
        return el("td", {"data-target": t, text: `${HV.fmt(v.tprob[idx])} / ${v.trank[idx] < 0 ? "n/a" : v.trank[idx]}`});
      })));
    panel.replaceChildren(el("div", {id: "panel-title", text: title}), el("table", {id: "readout"}, head, ...rows));
  }

  function draw() {
    layerLabel.textContent = ` ${D.layers[S.layer]}${S.layer === L - 1 ? " (output)" : ""}`;
    const sc = scale();
    if (grid) grid.cells.forEach((d, i) => {
      const x = value(S.layer, i), c = colour(x, sc, D.image ? 0.65 : 1);
      d.dataset.value = Number.isNaN(x) ? "nan" : String(x);
      d.classList.toggle("na", c == null);
      d.style.background = c == null ? "" : c;
    });
    chips.forEach((chip, i) => {
      const c = colour(value(S.layer, i), sc, 0.55);
      chip.style.background = c == null ? "" : c;
    });
    if (S.by[0] === "r") HV.legend(legend, `${byLabel()}, layer ${D.layers[S.layer]}`, 0, sc[1], `rank ${sc[1]}`, "rank 0");
    else HV.legend(legend, `${byLabel()}, layer ${D.layers[S.layer]}`, 0, sc[1]);
    drawPanel();
  }
  fillBy();
  draw();
})();
