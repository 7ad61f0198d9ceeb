"use strict";
// Shared helpers of every hooked_vlm view: the embedded data, typed-array decoding, colours, legend,
// tooltip, a sortable table. No network, no libraries.
const HV = (() => {
  const data = JSON.parse(document.getElementById("hv-data").textContent);
  const PROB_SCALE = 65534, PROB_NAN = 65535;
  function bytes(b64) {
    const s = atob(b64), u = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) u[i] = s.charCodeAt(i);
    return u;
  }
  const i32 = b64 => (b64 == null ? null : new Int32Array(bytes(b64).buffer));
  const u16 = b64 => (b64 == null ? null : new Uint16Array(bytes(b64).buffer));
  const f32 = b64 => (b64 == null ? null : new Float32Array(bytes(b64).buffer));
  const u8 = b64 => (b64 == null ? null : bytes(b64));
  function probs(b64) {
    if (b64 == null) return null;
    const q = new Uint16Array(bytes(b64).buffer), out = new Float32Array(q.length);
    for (let i = 0; i < q.length; i++) out[i] = q[i] === PROB_NAN ? NaN : q[i] / PROB_SCALE;
    return out;
  }
  const VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142], [31, 158, 137],
                   [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]];
  function viridis(t, alpha) {
    t = Math.min(1, Math.max(0, t));
    const x = t * (VIRIDIS.length - 1), i = Math.min(VIRIDIS.length - 2, Math.floor(x)), f = x - i;
    const c = VIRIDIS[i].map((v, j) => Math.round(v + f * (VIRIDIS[i + 1][j] - v)));
    return alpha == null ? `rgb(${c})` : `rgba(${c},${alpha})`;
  }
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === "style") e.style.cssText = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) if (c != null) e.append(c);
    return e;
  }
  function fmt(p) {
    if (p == null || Number.isNaN(p)) return "n/a";
    if (p !== 0 && Math.abs(p) < 0.001) return p.toExponential(1);
    return p.toFixed(3);
  }
  // a horizontal colour bar with its label and end values
  function legend(container, label, lo, hi, loText, hiText) {
    const stops = Array.from({length: 11}, (_, i) => `${viridis(i / 10)} ${i * 10}%`).join(",");
    container.replaceChildren(
      el("div", {class: "label", text: label}),
      el("div", {class: "bar", style: `background:linear-gradient(to right,${stops})`}),
      el("div", {class: "ticks"}, el("span", {text: loText == null ? fmt(lo) : loText}),
         el("span", {text: hiText == null ? fmt(hi) : hiText})));
  }
  const tip = document.getElementById("tooltip");
  function showTip(evt, text) {
    tip.textContent = text;
    tip.hidden = false;
    tip.style.left = `${evt.clientX + 12}px`;
    tip.style.top = `${evt.clientY + 12}px`;
  }
  function hideTip() { tip.hidden = true; }
  // columns: [{key, label, fmt?}], rows: list of objects; onHover(row, index)
  function table(columns, rows, onHover) {
    let order = rows.map((_, i) => i), sortKey = null, asc = true;
    const tbody = el("tbody");
    const cell = (c, r) => {
      const v = r[c.key];
      return c.fmt ? c.fmt(v) : typeof v === "number" ? (Number.isInteger(v) ? String(v) : fmt(v)) : String(v);
    };
    function render() {
      tbody.replaceChildren(...order.map(i => el("tr", {"data-index": i, onmouseenter: () => onHover && onHover(rows[i], i)},
        columns.map(c => el("td", {"data-key": c.key, text: cell(c, rows[i])})))));
    }
    const head = el("tr", {}, columns.map(c => el("th", {text: c.label, title: "click to sort", onclick: () => {
      asc = sortKey === c.key ? !asc : true;
      sortKey = c.key;
      order.sort((a, b) => (rows[a][c.key] > rows[b][c.key] ? 1 : rows[a][c.key] < rows[b][c.key] ? -1 : 0) * (asc ? 1 : -1));
      render();
    }})));
    render();
    return el("table", {class: "hv-table"}, el("thead", {}, head), tbody);
  }
  const svgNS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, ...children) {
    const e = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null) continue;
      if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children.flat()) if (c != null) e.append(c);
    return e;
  }
  // patch grid over the image: cells[i] = [row, col] or null; returns {wrap, cells: Map index -> div}
  function patchGrid(grid, image, cells, size, onCell) {
    const w = grid.cols >= grid.rows ? size : size * grid.cols / grid.rows;
    const h = grid.cols >= grid.rows ? size * grid.rows / grid.cols : size;
    const wrap = el("div", {class: "grid-wrap", style: `width:${w}px;height:${h}px`});
    if (image) wrap.append(el("img", {src: image, alt: "input image"}));
    const divs = new Map();
    cells.forEach((rc, i) => {
      if (!rc) return;
      const d = el("div", {class: "cell", "data-index": i, "data-row": rc[0], "data-col": rc[1],
        style: `left:${rc[1] * w / grid.cols}px;top:${rc[0] * h / grid.rows}px;width:${w / grid.cols}px;height:${h / grid.rows}px`});
      for (const ev of ["mouseenter", "mousemove", "mouseleave", "click"]) d.addEventListener(ev, e => onCell(ev, i, e));
      divs.set(i, d);
      wrap.append(d);
    });
    return {wrap, cells: divs};
  }
  // axes in an SVG: x over [x0, x1] (integer ticks at xticks), y over [y0, y1]; returns {sx, sy}
  function axes(root, box, x0, x1, y0, y1, xticks, xlabel, ylabel) {
    const {left, top, width, height} = box;
    const sx = x => left + (x1 === x0 ? width / 2 : (x - x0) / (x1 - x0) * width);
    const sy = y => top + height - (y1 === y0 ? height / 2 : (y - y0) / (y1 - y0) * height);
    const g = svg("g", {class: "axis"});
    g.append(svg("line", {x1: left, y1: top + height, x2: left + width, y2: top + height}),
             svg("line", {x1: left, y1: top, x2: left, y2: top + height}));
    for (const t of xticks) g.append(svg("text", {x: sx(t), y: top + height + 14, "text-anchor": "middle", text: String(t)}));
    for (let i = 0; i <= 4; i++) {
      const y = y0 + (y1 - y0) * i / 4;
      g.append(svg("line", {x1: left - 4, y1: sy(y), x2: left, y2: sy(y)}),
               svg("text", {x: left - 6, y: sy(y) + 4, "text-anchor": "end", text: fmt(y)}));
    }
    g.append(svg("text", {x: left + width / 2, y: top + height + 30, "text-anchor": "middle", text: xlabel}),
             svg("text", {x: 12, y: top + height / 2, "text-anchor": "middle", transform: `rotate(-90 12 ${top + height / 2})`, text: ylabel}));
    root.append(g);
    return {sx, sy};
  }
  const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];
  return {axes, PALETTE, data, i32, u16, f32, u8, probs, viridis, el, fmt, legend, showTip, hideTip, table, svg, patchGrid};
})();
