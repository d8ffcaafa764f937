// lorakit ui: plain JavaScript, no build step. Every word comes from /api/text (English and Chinese);
// every value from the server is put in with textContent, never as HTML.
"use strict";
let WORDS = {}, LANG = localStorage.getItem("lorakit-ui-lang") || "en", TEXT = {};
let current = null;
let lastRuns = "";  // the runs list as last drawn  // the run whose page is open: {name, rows, next, timer}
const $ = (id) => document.getElementById(id);
const t = (key) => (TEXT[key] !== undefined ? TEXT[key] : key);
// Metrics rows' keys that are not a method's own metric: drawn elsewhere or not curves.
const COMMON = new Set(["step", "epoch", "elapsed_s", "tokens_seen", "loss_tokens_seen", "loss", "eval_loss",
  "eval_perplexity", "learning_rate", "grad_norm", "eval_runtime", "eval_samples_per_second",
  "eval_steps_per_second", "total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second",
  "train_loss"]);

function applyText() {
  TEXT = WORDS[LANG] || WORDS.en;
  document.documentElement.lang = LANG === "zh" ? "zh-CN" : "en";
  for (const el of document.querySelectorAll("[data-t]")) el.textContent = t(el.dataset.t);
}

function say(message) {
  const box = $("message");
  box.hidden = !message;
  box.textContent = message ? `${t("error")}: ${message}` : "";
}

async function api(path, body) {
  const opts = body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify(body)};
  const response = await fetch(path, {credentials: "same-origin", ...opts});
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = data.error || (data.detail ? JSON.stringify(data.detail) : response.statusText);
    say(message);
    throw new Error(message);
  }
  say("");
  return data;
}

function show(view) {
  for (const name of ["runs", "new", "run"]) $("view-" + name).hidden = name !== view;
  if (view !== "run" && current) { clearInterval(current.timer); current = null; }
  if (view === "runs") loadRuns();
}

function cell(row, value, cls) {
  const td = row.insertCell();
  if (value instanceof Node) td.appendChild(value); else td.textContent = value === null || value === undefined ? "-" : value;
  if (cls) td.className = cls;
  return td;
}

function fmt(value) {
  return typeof value === "number" && !Number.isInteger(value) ? value.toFixed(4) : value;
}

async function loadRuns() {
  const list = await api("/api/runs");
  const drawn = JSON.stringify([LANG, list]);
  if (drawn === lastRuns) return;  // unchanged: keep the rows (and the ticked boxes) as they are
  lastRuns = drawn;
  const body = $("runs-table").tBodies[0];
  body.textContent = "";
  $("no-runs").hidden = list.length > 0;
  for (const run of list) {
    const row = body.insertRow();
    row.dataset.run = run.name;
    row.dataset.state = run.state;
    const box = document.createElement("input");
    box.type = "checkbox"; box.value = run.name; box.className = "pick";
    cell(row, box);
    const link = document.createElement("a");
    link.href = "#"; link.textContent = run.name; link.className = "open-run";
    link.onclick = (e) => { e.preventDefault(); openRun(run.name); };
    cell(row, link);
    const state = cell(row, t("state_" + run.state), "state-" + run.state);
    if (run.error) state.title = run.error;
    if (run.error) { const note = document.createElement("div"); note.className = "error"; note.textContent = run.error; state.appendChild(note); }
    cell(row, run.method);
    cell(row, run.last_step);
    cell(row, fmt(run.last_train_loss));
    cell(row, run.checkpoints.join(", ") || "-", "checkpoints");
  }
}

function tokensPerSecond(rows) {
  const timed = rows.filter((r) => typeof r.tokens_seen === "number" && typeof r.elapsed_s === "number");
  if (timed.length < 2) return null;
  const [a, b] = timed.slice(-2);
  return b.elapsed_s > a.elapsed_s ? (b.tokens_seen - a.tokens_seen) / (b.elapsed_s - a.elapsed_s) : null;
}

function drawRun() {
  const rows = current.rows;
  const series = [seriesOf(rows, "loss", t("train_loss"), COLORS[0]), seriesOf(rows, "eval_loss", t("eval_loss"), COLORS[1])]
    .filter((s) => s.points.length);
  drawChart($("loss-chart"), series);
  legend($("loss-legend"), series);
  // A finished run's own figure; while training, the pace between the last two logged steps.
  const tps = current.summary && current.summary.tokens_per_second ? current.summary.tokens_per_second : tokensPerSecond(rows);
  $("run-tps").textContent = tps === null ? "-" : tps.toFixed(1);
  const own = [...new Set(rows.flatMap((r) => Object.keys(r)))].filter((k) => !COMMON.has(k) &&
    rows.some((r) => typeof r[k] === "number")).slice(0, 8);
  const box = $("method-charts");
  box.textContent = "";
  $("method-title").hidden = !own.length;
  for (const key of own) {
    const wrap = document.createElement("div");
    const title = document.createElement("div");
    title.textContent = key;
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("width", 300); svg.setAttribute("height", 180); svg.classList.add("chart");
    wrap.append(title, svg);
    box.appendChild(wrap);
    drawChart(svg, [seriesOf(rows, key, key)]);
  }
}

function table(el, rows) {
  el.textContent = "";
  for (const values of rows) {
    const row = el.insertRow();
    for (const v of values) cell(row, fmt(v));
  }
}

async function pollRun() {
  if (!current) return;
  const name = current.name;
  const [more, page] = await Promise.all([api(`/api/runs/${encodeURIComponent(name)}/metrics?since=${current.next}`),
    api(`/api/runs/${encodeURIComponent(name)}`)]);
  if (!current || current.name !== name) return;
  current.rows.push(...more.rows);
  current.next = more.next;
  const run = page.run;
  current.summary = page.summary;
  $("run-state").textContent = t("state_" + run.state);
  $("run-state").className = "state-" + run.state;
  $("view-run").dataset.state = run.state;
  $("run-error").textContent = run.error || "";
  $("run-step").textContent = run.last_step;
  $("run-total").textContent = page.total_steps || "?";
  $("run-eta").textContent = page.eta_s === null || page.eta_s === undefined ? "-" : `${Math.round(page.eta_s)} s`;
  $("run-ckpts").textContent = run.checkpoints.join(", ") || "-";
  // Peak memory so far: each training row carries it (the GPU's when there is one), the summary the run's.
  const lastRow = [...current.rows].reverse().find((r) => r.peak_memory_bytes);
  const memory = (page.summary && (page.summary.cuda_peak_reserved_bytes || page.summary.peak_rss_bytes))
    || (lastRow && lastRow.peak_memory_bytes);
  $("run-mem").textContent = memory ? `${(memory / 2 ** 30).toFixed(2)} GiB` : "-";
  $("stop").disabled = !(run.started_here && (run.state === "running" || run.state === "starting"));
  $("resume").disabled = !(run.started_here && (run.state === "stopped" || run.state === "failed"));
  table($("run-summary"), Object.entries(page.summary || page.info || {}).filter(([, v]) => typeof v !== "object" || v === null));
  $("run-settings").textContent = JSON.stringify(page.config, null, 2);
  $("run-eval-box").hidden = !page.eval;
  if (page.eval) table($("run-eval"), [[t("metric"), t("base"), t("tuned"), ""], ...page.eval]);
  const checks = page.info && page.info.verify_checks;
  $("run-verify-box").hidden = !checks;
  if (checks) {
    $("run-verify").textContent = "";
    for (const line of [page.info.verify, ...checks]) { const li = document.createElement("li"); li.textContent = line; $("run-verify").appendChild(li); }
  }
  drawRun();
  if (run.method === "grpo") await loadSample(name, run.last_step);
}

async function openRun(name) {
  show("run");
  current = {name, rows: [], next: 0, timer: null, sampleKey: null, chat: []};
  $("sample-box").hidden = true;
  $("sample-step").textContent = "";
  $("run-title").textContent = name;
  $("run-config").href = `/api/runs/${encodeURIComponent(name)}/config.yaml`;
  $("chat-answers").textContent = "";
  await watchTasks(name);
  await pollRun().catch(() => {});
  current.timer = setInterval(() => pollRun().catch(() => {}), 1000);
}

// ---- merge and export: each shows the command its button runs, and how the last run of it went ----
async function watchTasks(name) {
  const all = await api(`/api/runs/${encodeURIComponent(name)}/commands`);
  const box = $("commands");
  box.textContent = "";
  for (const [kind, item] of Object.entries(all)) {
    const row = document.createElement("div");
    row.className = "task";
    row.dataset.kind = kind;
    row.dataset.state = item.state.running ? "running" : item.state.exit === null ? "" : item.state.exit === 0 ? "finished" : "failed";
    const code = document.createElement("pre");
    code.textContent = item.command;
    const button = document.createElement("button");
    button.textContent = t("run_task");
    button.disabled = item.state.running;
    button.onclick = () => api(`/api/runs/${encodeURIComponent(name)}/tasks/${kind}`, {}).then(() => watchTasks(name)).catch(() => {});
    const state = document.createElement("span");
    state.className = "task-state";
    state.textContent = row.dataset.state ? t("state_" + row.dataset.state) + (item.state.log.length ? `: ${item.state.log.at(-1)}` : "") : "";
    row.append(code, button, state);
    box.appendChild(row);
  }
  if (current && current.name === name && Object.values(all).some((i) => i.state.running)) {
    setTimeout(() => watchTasks(name).catch(() => {}), 2000);
  }
}

// ---- new run ----
async function loadForm() {
  const spec = await api("/api/form");
  $("runs-folder").textContent = spec.runs;
  const box = $("knobs");
  box.textContent = "";
  for (const knob of spec.knobs) {
    const label = document.createElement("label");
    label.className = "knob";
    const head = document.createElement("b");
    head.textContent = knob.key;
    let input;
    if (knob.choices.length) {
      input = document.createElement("select");
      for (const c of knob.choices) { const o = document.createElement("option"); o.value = o.textContent = c; input.appendChild(o); }
      input.value = knob.default;
      input.dataset.default = knob.default;
    } else {
      input = document.createElement("input");
      input.type = "text";
      input.placeholder = `${knob.default}`;
    }
    input.className = "knob-input";
    input.dataset.key = knob.key;
    input.id = "knob-" + knob.key.replace(/\./g, "-");
    const help = document.createElement("small");
    help.textContent = `${knob.description} (${knob.type}; ${t("default")}: ${knob.default})`;
    label.append(head, help, input);
    box.appendChild(label);
  }
}

function formBody() {
  const values = {};
  for (const input of document.querySelectorAll(".knob-input")) {
    if (input.value.trim() !== "" && (input.tagName !== "SELECT" || input.value !== input.dataset.default)) values[input.dataset.key] = input.value;
  }
  return {name: $("run-name").value.trim(), values, extra: $("extra").value};
}

function showConfig(yaml) {
  $("config-text").hidden = false;
  $("config-text").textContent = yaml;
  const link = $("config-download");
  link.hidden = false;
  link.href = URL.createObjectURL(new Blob([yaml], {type: "application/x-yaml"}));
  link.download = `${$("run-name").value.trim() || "config"}.yaml`;
}

async function previewData() {
  $("preview").hidden = false;
  $("findings").textContent = t("loading");
  $("samples").textContent = "";
  const result = await api("/api/preview", formBody()).catch((e) => { $("findings").textContent = ""; throw e; });
  $("findings").textContent = "";
  const findings = result.reports.flatMap((r) => r.findings);
  for (const f of findings) {
    const li = document.createElement("li");
    li.className = "finding level-" + f.level;
    li.textContent = `${f.level}: ${f.message}` + (f.examples.length ? ` (${f.examples.join("; ")})` : "");
    $("findings").appendChild(li);
  }
  if (!findings.length) { const li = document.createElement("li"); li.textContent = t("no_findings"); $("findings").appendChild(li); }
  for (const sample of result.samples) {
    const div = document.createElement("div");
    div.className = "sample";
    const head = document.createElement("div");
    head.textContent = `${sample.split} · ${sample.origin}`;
    div.appendChild(head);
    for (const seg of sample.segments) {
      const span = document.createElement("span");
      span.textContent = seg.text;
      if (seg.trained) span.className = "loss";
      div.appendChild(span);
    }
    $("samples").appendChild(div);
  }
}

async function uploadData() {
  const file = $("upload").files[0];
  const name = $("run-name").value.trim();
  if (!file || !name) return;
  const response = await fetch(`/api/uploads/${encodeURIComponent(name)}/${encodeURIComponent(file.name)}`,
    {method: "PUT", credentials: "same-origin", body: file});
  const data = await response.json().catch(() => ({}));
  if (!response.ok) { say(data.error || response.statusText); return; }
  say("");
  $("knob-data-train").value = data.path;  // saved beside the run's config: data.train names it
}

async function startRun() {
  const body = formBody();
  const started = await api("/api/runs", body);
  showConfig(started.yaml);
  openRun(body.name);
}

async function init() {
  WORDS = await api("/api/text");
  applyText();
  $("lang").onclick = () => { LANG = LANG === "en" ? "zh" : "en"; localStorage.setItem("lorakit-ui-lang", LANG); applyText(); loadRuns(); };
  $("nav-runs").onclick = () => show("runs");
  $("nav-new").onclick = () => show("new");
  $("refresh").onclick = () => loadRuns();
  $("compare").onclick = compareRuns;
  $("show-config").onclick = () => api("/api/config", formBody()).then((r) => showConfig(r.yaml)).catch(() => {});
  $("do-preview").onclick = () => previewData().catch(() => {});
  $("start").onclick = () => startRun().catch(() => {});
  $("upload").onchange = () => uploadData().catch(() => {});
  $("stop").onclick = () => api(`/api/runs/${encodeURIComponent(current.name)}/stop`, {}).catch(() => {});
  $("resume").onclick = () => api(`/api/runs/${encodeURIComponent(current.name)}/resume`, {}).catch(() => {});
  $("sample-step").onchange = () => { if (current) loadSample(current.name, "").catch(() => {}); };
  $("chat-send").onclick = () => {
    $("chat-send").disabled = true;  // one question at a time: the next one carries this one's answer
    sendChat().catch(() => {}).finally(() => { $("chat-send").disabled = false; });
  };
  $("chat-new").onclick = newChat;
  await loadForm();
  show("runs");
  setInterval(() => { if (!$("view-runs").hidden) loadRuns().catch(() => {}); }, 2000);
  document.body.dataset.ready = "true";
}

init();
