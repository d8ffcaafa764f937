// lorakit ui's curves: SVG polylines drawn by hand (no charting library to load from a CDN, so the
// page works offline). Loaded before page.js, which calls drawChart, seriesOf and legend.
"use strict";
const COLORS = ["#1c7ed6", "#e8590c", "#2b8a3e", "#ae3ec9", "#c92a2a", "#0b7285"];

// A chart: one polyline per series, x and y scaled to the data, the ends of both axes labelled.
function drawChart(svg, series) {
  const W = +svg.getAttribute("width"), H = +svg.getAttribute("height"), pad = 40;
  const points = series.flatMap((s) => s.points);
  svg.textContent = "";
  const ns = "http://www.w3.org/2000/svg";
  const add = (tag, attrs, text) => {
    const el = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    svg.appendChild(el);
    return el;
  };
  add("rect", {x: pad, y: 10, width: W - pad - 10, height: H - pad - 10, fill: "none", stroke: "#ccc"});
  if (!points.length) return;
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y1 += Math.abs(y1) * 0.05 || 1; y0 -= Math.abs(y0) * 0.05 || 1; }
  const X = (x) => pad + ((x - x0) / (x1 - x0)) * (W - pad - 10);
  const Y = (y) => H - pad - ((y - y0) / (y1 - y0)) * (H - pad - 20);
  add("text", {x: pad, y: H - pad + 14}, fmtAxis(x0));
  add("text", {x: W - 30, y: H - pad + 14}, fmtAxis(x1));
  add("text", {x: 2, y: H - pad}, fmtAxis(y0));
  add("text", {x: 2, y: 20}, fmtAxis(y1));
  add("text", {x: W / 2 - 10, y: H - 6}, t("step"));
  series.forEach((s, i) => {
    const line = add("polyline", {fill: "none", stroke: s.color || COLORS[i % COLORS.length], "stroke-width": 2,
      points: s.points.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ")});
    line.classList.add("line");
    line.dataset.label = s.label;
    line.dataset.count = s.points.length;
    for (const p of s.points.length < 60 ? s.points : []) {
      add("circle", {cx: X(p[0]), cy: Y(p[1]), r: 2.5, fill: s.color || COLORS[i % COLORS.length]});
    }
  });
}

function fmtAxis(v) {
  return Math.abs(v) >= 1000 || Number.isInteger(v) ? String(Math.round(v)) : v.toPrecision(3);
}

function seriesOf(rows, key, label, color) {
  return {label, color, points: rows.filter((r) => typeof r[key] === "number").map((r) => [r.step, r[key]])};
}

function legend(box, series) {
  box.textContent = "";
  for (const [i, s] of series.entries()) {
    const span = document.createElement("span");
    span.style.color = s.color || COLORS[i % COLORS.length];
    span.textContent = `■ ${s.label}`;
    box.appendChild(span);
  }
}
