// pairgraph mapping page: two layer graphs as DAGs, the mapping between them, the similarity matrix,
// and (after training) each pair's 1 - similarity over steps. Reads the JSON in #pairgraph-data;
// no network, no library. Written by pairgraph.compiler.mapping_html.
"use strict";
const DATA = JSON.parse(document.getElementById("pairgraph-data").textContent);
const NS = "http://www.w3.org/2000/svg";
const ROW = 18, LANE = 16, LABEL = 260, ARC = 40, GAP = 260, TOP = 40;
const collapsed = new Set();
const VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"];

function el(tag, attrs, parent, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}
function viridis(v, lo) {
  if (v === null || v === undefined) return "#555";
  const t = Math.max(0, Math.min(1, (v - lo) / (1 - lo)));
  return VIRIDIS[Math.round(t * (VIRIDIS.length - 1))];
}
function esc(s) { return String(s).replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]); }
function shortName(n) { return n.block && n.name.startsWith(n.block + ".") ? n.name.slice(n.block.length + 1) : n.name; }
const SIM_LO = Math.min(0, ...((DATA.matrix || []).flat().filter(v => v !== null)));
const partners = {};
for (const p of DATA.pairs) {
  (partners[p.guide] = partners[p.guide] || { side: "guide", list: [] }).list.push(p);
  (partners["t:" + p.target] = partners["t:" + p.target] || { side: "target", list: [] }).list.push(p);
}

// Rows of one side with its collapsed blocks folded into one row each: name -> {row, item}.
function placeSide(side) {
  const g = DATA[side], place = {}, items = [];
  for (const n of g.nodes) {
    const key = side + ":" + n.block;
    if (n.block && collapsed.has(key)) {
      const last = items[items.length - 1];
      if (!last || last.block !== key) items.push({ block: key, name: n.block, members: [], lane: 0 });
      items[items.length - 1].members.push(n.name);
      place[n.name] = items.length - 1;
    } else {
      items.push({ node: n, lane: n.lane });
      place[n.name] = items.length - 1;
    }
  }
  return { items, place };
}

function draw() {
  const root = document.getElementById("graph-root");
  root.replaceChildren();
  const sides = { guide: placeSide("guide"), target: placeSide("target") };
  const rows = Math.max(sides.guide.items.length, sides.target.items.length);
  const lanes = s => 1 + Math.max(0, ...DATA[s].nodes.map(n => n.lane));
  const gx = LABEL + ARC, tx = gx + LANE * (lanes("guide") - 1) + GAP + LANE * (lanes("target") - 1);
  const geo = {
    guide: { x0: gx, out: -1, step: (rows - 1) / Math.max(sides.guide.items.length - 1, 1) },
    target: { x0: tx, out: 1, step: (rows - 1) / Math.max(sides.target.items.length - 1, 1) },
  };
  const pos = (side, name) => {
    const s = sides[side], i = s.place[name], it = s.items[i], G = geo[side];
    return { x: G.x0 - G.out * LANE * it.lane, y: TOP + i * G.step * ROW, item: i };
  };
  const layers = { blocks: el("g", {}, root), edges: el("g", {}, root), map: el("g", {}, root), nodes: el("g", {}, root) };
  for (const side of ["guide", "target"]) drawSide(side, sides[side], geo[side], pos, layers);
  for (const p of DATA.pairs) {
    const a = pos("guide", p.guide), b = pos("target", p.target);
    const x1 = geo.guide.x0 + LANE * (lanes("guide") - 1) + 8, x2 = geo.target.x0 - LANE * (lanes("target") - 1) - 8;
    const e = el("path", { d: `M${x1},${a.y} C${x1 + GAP / 3},${a.y} ${x2 - GAP / 3},${b.y} ${x2},${b.y}`,
      class: "map-edge", stroke: viridis(p.similarity, SIM_LO), "stroke-width": 0.8 + 1.6 * Math.min(p.weight, 3),
      "stroke-dasharray": p.weight === 0 ? "4 3" : "none", "data-guide": p.guide, "data-target": p.target }, layers.map);
    el("title", {}, e, `${p.guide} → ${p.target}  weight ${p.weight}` + (p.similarity !== null ? `  ${DATA.measure} ${p.similarity.toFixed(3)}` : ""));
  }
  el("text", { x: gx - ARC - LABEL / 2, y: 16, class: "side-title" }, root, `guide (${DATA.guide.method}, ${DATA.guide.nodes.length} taps)`);
  el("text", { x: tx + ARC + LABEL / 2, y: 16, class: "side-title" }, root, `target (${DATA.target.method}, ${DATA.target.nodes.length} taps)`);
  document.getElementById("counts").textContent =
    `${document.querySelectorAll(".tap").length} taps and ${document.querySelectorAll(".block-node").length} collapsed blocks shown, ` +
    `${document.querySelectorAll(".map-edge").length} mapping edges, ${document.querySelectorAll(".graph-edge").length} graph edges`;
  highlight();
}

function drawSide(side, s, G, pos, layers) {
  const g = DATA[side], labelX = G.x0 + G.out * ARC, anchor = G.out < 0 ? "end" : "start";
  for (const [block, range] of Object.entries(g.blocks)) {
    if (collapsed.has(side + ":" + block)) continue;
    const y0 = pos(side, g.nodes[range[0]].name).y - ROW / 2, y1 = pos(side, g.nodes[range[1]].name).y + ROW / 2;
    const xs = [labelX + G.out * LABEL, G.x0 - G.out * LANE * 3];
    el("rect", { x: Math.min(...xs), y: y0, width: Math.abs(xs[1] - xs[0]), height: y1 - y0, rx: 5, class: "block-box" }, layers.blocks);
    const head = el("text", { x: labelX + G.out * (LABEL - 4), y: y0 + 11, "text-anchor": G.out < 0 ? "start" : "end",
      class: "block-head", "data-block": side + ":" + block }, layers.blocks, "▾ " + block);
    head.addEventListener("click", () => { collapsed.add(side + ":" + block); draw(); });
  }
  const seen = new Set();
  for (const [u, v] of g.edges) {
    const a = pos(side, u), b = pos(side, v), key = a.item + ">" + b.item;
    if (a.item === b.item || seen.has(key)) continue;
    seen.add(key);
    const straight = b.item === a.item + 1 && a.x === b.x;
    const bulge = Math.min(ARC - 4, 8 + 0.4 * Math.abs(b.y - a.y)) * G.out;
    const bx = (G.out < 0 ? Math.min(a.x, b.x) : Math.max(a.x, b.x)) + bulge;
    el("path", { d: straight ? `M${a.x},${a.y} L${b.x},${b.y}` : `M${a.x},${a.y} C${bx},${a.y} ${bx},${b.y} ${b.x},${b.y}`,
      class: "graph-edge" + (a.x !== b.x ? " branch" : "") }, layers.edges);
  }
  s.items.forEach((it, i) => {
    const y = pos(side, it.node ? it.node.name : it.members[0]).y, x = G.x0 - G.out * LANE * it.lane;
    if (!it.node) {
      const r = el("rect", { x: x - 7, y: y - 7, width: 14, height: 14, rx: 3, class: "block-node", "data-block": it.block }, layers.nodes);
      const t = el("text", { x: labelX, y: y + 4, "text-anchor": anchor, class: "label block-label", "data-block": it.block },
        layers.nodes, `▸ ${it.name} (${it.members.length} taps)`);
      for (const e of [r, t]) e.addEventListener("click", () => { collapsed.delete(it.block); draw(); });
      return;
    }
    const n = it.node, live = side === "target" || (partners[n.name] && partners[n.name].list.length);
    const c = el("circle", { cx: x, cy: y, r: 5, class: "tap" + (live ? "" : " unmapped"), "data-name": n.name, "data-side": side,
      style: live ? `fill:${n.colour}` : `stroke:${n.colour}` }, layers.nodes);
    c.addEventListener("mouseenter", ev => showTip(ev, side, n));
    c.addEventListener("mouseleave", hideTip);
    if (n.merge) el("text", { x: x + G.out * 9, y: y - 6, class: "merge" }, layers.nodes, "⊕");
    el("text", { x: labelX, y: y + 4, "text-anchor": anchor, class: "label", "data-name": n.name }, layers.nodes,
      `${shortName(n)} · ${n.type} · ${n.shape.join("×") || "scalar"}` + (live ? "" : " (no term)"));
  });
}

function showTip(ev, side, n) {
  const tip = document.getElementById("tip"), key = side === "guide" ? n.name : "t:" + n.name;
  const list = (partners[key] || { list: [] }).list;
  const lines = [`<b>${esc(n.name)}</b>`, `type: ${esc(n.type)}`, `output shape: (batch, ${n.shape.join(", ")})`,
    `provider: ${esc(DATA[side].method)} · depth ${n.depth}`, `${side} tap; mapped partners:`];
  for (const p of list) {
    const other = side === "guide" ? p.target : p.guide;
    lines.push(`&nbsp;&nbsp;${esc(other)} — weight ${p.weight}` + (p.similarity !== null ? `, ${DATA.measure} ${p.similarity.toFixed(3)}` : ""));
  }
  if (!list.length) lines.push("&nbsp;&nbsp;none");
  tip.innerHTML = lines.join("<br>");
  tip.style.display = "block";
  tip.style.left = ev.clientX + 14 + "px";
  tip.style.top = ev.clientY + 10 + "px";
}
function hideTip() { document.getElementById("tip").style.display = "none"; }

function highlight() {
  const q = document.getElementById("search").value.trim().toLowerCase();
  let hits = 0, first = null;
  document.querySelectorAll(".tap").forEach(c => {
    const hit = q !== "" && c.dataset.name.toLowerCase().includes(q);
    c.classList.toggle("hit", hit);
    if (hit) { hits++; first = first || c; }
  });
  document.getElementById("hits").textContent = q ? `${hits} match${hits === 1 ? "" : "es"}` : "";
  if (first) centreOn(+first.getAttribute("cx"), +first.getAttribute("cy"));
}

// pan & zoom: the SVG's viewBox
const view = { x: 0, y: 0, w: 1, h: 1 };
function setView() { document.getElementById("graph").setAttribute("viewBox", `${view.x} ${view.y} ${view.w} ${view.h}`); }
function resetView() {
  const b = document.getElementById("graph-root").getBBox();
  Object.assign(view, { x: b.x - 10, y: b.y - 10, w: b.width + 20, h: Math.max(b.height + 20, 200) });
  setView();
}
function centreOn(x, y) { view.x = x - view.w / 2; view.y = y - view.h / 2; setView(); }
function panZoom() {
  const svg = document.getElementById("graph");
  svg.addEventListener("wheel", ev => {
    ev.preventDefault();
    const r = svg.getBoundingClientRect(), f = ev.deltaY > 0 ? 1.15 : 1 / 1.15;
    const mx = view.x + (ev.clientX - r.left) / r.width * view.w, my = view.y + (ev.clientY - r.top) / r.height * view.h;
    Object.assign(view, { x: mx - (mx - view.x) * f, y: my - (my - view.y) * f, w: view.w * f, h: view.h * f });
    setView();
  }, { passive: false });
  let drag = null;
  svg.addEventListener("mousedown", ev => { drag = { x: ev.clientX, y: ev.clientY, vx: view.x, vy: view.y }; });
  window.addEventListener("mouseup", () => { drag = null; });
  window.addEventListener("mousemove", ev => {
    if (!drag) return;
    const r = svg.getBoundingClientRect();
    view.x = drag.vx - (ev.clientX - drag.x) / r.width * view.w;
    view.y = drag.vy - (ev.clientY - drag.y) / r.height * view.h;
    setView();
  });
}

function heatmap() {
  const m = DATA.matrix, svg = document.getElementById("heatmap");
  if (!m) return;
  const c = Math.max(4, Math.min(36, Math.floor(640 / Math.max(m.length, m[0].length))));
  const left = 150, top = 10;
  svg.setAttribute("width", left + c * m[0].length + 10);
  svg.setAttribute("height", top + c * m.length + 150);
  const gi = Object.fromEntries(DATA.guide.nodes.map((n, i) => [n.name, i]));
  const tj = Object.fromEntries(DATA.target.nodes.map((n, j) => [n.name, j]));
  m.forEach((row, i) => {
    row.forEach((v, j) => {
      const r = el("rect", { x: left + j * c, y: top + i * c, width: c, height: c, fill: v === null ? "#ddd" : viridis(v, SIM_LO), class: "cell" }, svg);
      el("title", {}, r, `${DATA.guide.nodes[i].name} × ${DATA.target.nodes[j].name}: ${v === null ? "nan" : v.toFixed(3)}`);
    });
    if (c >= 8) el("text", { x: left - 4, y: top + i * c + c * 0.75, "text-anchor": "end", class: "tick" }, svg, DATA.guide.nodes[i].name);
  });
  if (c >= 8) DATA.target.nodes.forEach((n, j) => el("text", { x: left + j * c + c * 0.7, y: top + m.length * c + 4,
    transform: `rotate(60 ${left + j * c + c * 0.7} ${top + m.length * c + 4})`, class: "tick" }, svg, n.name));
  const path = DATA.pairs.map(p => [gi[p.guide], tj[p.target]]);
  for (const [i, j] of path) el("rect", { x: left + j * c, y: top + i * c, width: c, height: c, class: "chosen" }, svg);
  el("polyline", { points: path.map(([i, j]) => `${left + (j + 0.5) * c},${top + (i + 0.5) * c}`).join(" "), class: "path" }, svg);
}

function training() {
  const T = DATA.training, svg = document.getElementById("curves");
  if (!T) return;
  const W = 640, H = 260, L = 50, B = 30, maxStep = Math.max(...T.pairs.flatMap(p => p.steps));
  const X = s => L + s / maxStep * (W - L - 10), Y = v => 10 + (1 - Math.min(v, 1)) * (H - B - 10);
  el("line", { x1: L, y1: Y(0), x2: W - 10, y2: Y(0), class: "axis" }, svg);
  el("line", { x1: L, y1: Y(0), x2: L, y2: Y(1), class: "axis" }, svg);
  el("text", { x: L - 6, y: Y(1) + 4, "text-anchor": "end", class: "tick" }, svg, "1");
  el("text", { x: L - 6, y: Y(0) + 4, "text-anchor": "end", class: "tick" }, svg, "0");
  el("text", { x: W / 2, y: H - 4, class: "tick" }, svg, `step (0–${maxStep}); dashed: matched at 1 − ${DATA.measure} ≤ ${T.threshold}`);
  el("line", { x1: L, y1: Y(T.threshold), x2: W - 10, y2: Y(T.threshold), class: "axis", "stroke-dasharray": "4 3" }, svg);
  const body = document.querySelector("#matched tbody");
  T.pairs.forEach((p, k) => {
    const colour = `hsl(${(k * 137) % 360},60%,45%)`;
    const line = el("polyline", { points: p.steps.map((s, i) => `${X(s)},${Y(p.values[i])}`).join(" "), class: "curve", stroke: colour }, svg);
    el("title", {}, line, `${p.guide} → ${p.target}`);
    const tr = document.createElement("tr");
    tr.innerHTML = `<td style="color:${colour}">${esc(p.guide)} → ${esc(p.target)}</td><td>${p.values[0].toFixed(3)}</td>` +
      `<td>${p.values[p.values.length - 1].toFixed(3)}</td><td>${p.matched_at === null ? "never" : "step " + p.matched_at}</td>`;
    body.appendChild(tr);
  });
}

document.getElementById("search").addEventListener("input", highlight);
document.getElementById("expand").addEventListener("click", () => { collapsed.clear(); draw(); });
document.getElementById("collapse").addEventListener("click", () => {
  for (const s of ["guide", "target"]) for (const b of Object.keys(DATA[s].blocks)) collapsed.add(s + ":" + b);
  draw();
});
document.getElementById("fit").addEventListener("click", resetView);
draw();
resetView();
panZoom();
heatmap();
training();
