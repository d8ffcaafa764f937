// lorakit ui: a GRPO run's sample of completions on its page. Loaded before page.js, which calls
// loadSample; every value from the server goes in with textContent, never as HTML.
"use strict";

// ---- GRPO: a logging step's sample of completions, the latest unless an earlier step is picked ----
async function loadSample(name, lastStep) {
  const picked = $("sample-step").value;  // "" is the latest
  const key = `${lastStep}:${picked}:${LANG}`;
  if (current.sampleKey === key) return;  // nothing new to show since the last poll
  const sample = await api(`/api/runs/${encodeURIComponent(name)}/completions?step=${encodeURIComponent(picked)}`);
  if (!current || current.name !== name) return;
  current.sampleKey = key;
  $("sample-box").hidden = !sample.steps.length;
  const select = $("sample-step");
  select.textContent = "";
  for (const step of ["", ...sample.steps.slice().reverse()]) {
    const o = document.createElement("option");
    o.value = step; o.textContent = step === "" ? `${t("latest")} (${sample.steps.at(-1)})` : step;
    select.appendChild(o);
  }
  select.value = picked;
  const names = [...new Set(sample.rows.flatMap((r) => Object.keys(r.rewards || {})))];
  const el = $("sample-table");
  el.textContent = "";
  const head = el.createTHead().insertRow();
  for (const label of [t("prompt"), t("completion"), ...names, t("reward"), t("advantage"), t("cut")]) {
    const th = document.createElement("th"); th.textContent = label; head.appendChild(th);
  }
  const body = el.createTBody();
  for (const r of sample.rows) {
    const row = body.insertRow();
    cell(row, r.prompt).title = r.source;
    cell(row, r.completion, "completion");
    for (const n of names) cell(row, fmt(r.rewards[n]));
    cell(row, fmt(r.reward)); cell(row, fmt(r.advantage)); cell(row, r.truncated ? t("yes") : t("no"));
  }
}
