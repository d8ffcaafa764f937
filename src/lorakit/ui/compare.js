// lorakit ui: two or more runs side by side, their loss curves on one chart and the settings in which
// they differ. Loaded after chart.js and before page.js, whose api, table and seriesOf it uses.
"use strict";

function compareRuns() {
  const names = [...document.querySelectorAll(".pick:checked")].map((b) => b.value);
  if (names.length < 2) return;
  Promise.all(names.map((n) => Promise.all([api(`/api/runs/${encodeURIComponent(n)}/metrics`), api(`/api/runs/${encodeURIComponent(n)}`)])))
    .then((all) => {
      $("comparison").hidden = false;
      const box = $("compare-charts");
      box.textContent = "";
      const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
      svg.setAttribute("width", 640); svg.setAttribute("height", 300); svg.classList.add("chart");
      svg.id = "compare-chart";
      const leg = document.createElement("div"); leg.className = "legend";
      box.append(leg, svg);
      const series = all.map(([m], i) => seriesOf(m.rows, "loss", names[i], COLORS[i % COLORS.length]));
      drawChart(svg, series);
      legend(leg, series);
      const flat = all.map(([, page]) => flatten(page.config));
      const keys = [...new Set(flat.flatMap(Object.keys))].filter((k) => new Set(flat.map((f) => JSON.stringify(f[k]))).size > 1);
      table($("compare-settings"), [["", ...names], ...keys.map((k) => [k, ...flat.map((f) => JSON.stringify(f[k]))])]);
    }).catch(() => {});
}

function flatten(obj, prefix = "", out = {}) {
  for (const [k, v] of Object.entries(obj || {})) {
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, `${prefix}${k}.`, out); else out[prefix + k] = v;
  }
  return out;
}
