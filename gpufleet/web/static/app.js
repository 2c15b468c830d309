// The console: vanilla JS over /api; redraws on server-sent events instead of reloading.
"use strict";
const $ = (s) => document.querySelector(s);
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
let token = sessionStorage.getItem("token") || "";
let role = "viewer";

async function api(path, method = "GET") {
  const r = await fetch(path, {method, headers: token ? {Authorization: "Bearer " + token} : {}});
  const body = await r.json();
  if (!r.ok) throw new Error(body.message || r.statusText);
  return body;
}
const badge = (s) => `<span class="badge ${esc(s)}">${esc(s)}</span>`;

// The action matrix as the seed states it; the server enforces it too (409).
function actions(m) {
  const a = [], s = m.status_name, s1 = m.step1_state_name, s2 = m.step2_state_name;
  if (s === "READY") a.push("run");
  if (s === "STOPPED" || s === "ERROR") a.push("restart");
  if (s === "STOPPED") a.push("resume");
  if (s === "IN_PROGRESS" && s1 === "IN_PROGRESS") a.push("cancel");
  if (s1 === "COMPLETED" && s2 !== "IN_PROGRESS") a.push("test");
  if (s2 === "IN_PROGRESS") a.push("cancel-test");
  return a;
}
function buttons(m) {
  if (role === "viewer") return "";
  return actions(m).map((a) => `<button data-act="${a}" data-uuid="${esc(m.uuid)}" data-epoch="${esc(m.best_epoch)}">${a}</button>`).join("");
}
async function act(btn) {
  const {act: a, uuid, epoch} = btn.dataset;
  try {
    await api(a === "test" ? `/api/models/${uuid}/test?epoch=${epoch || 1}` : `/api/models/${uuid}/${a}`, "POST");
    $("#msg") && ($("#msg").textContent = "");
  } catch (e) { $("#msg") && ($("#msg").textContent = e.message); }
  render();
}

async function modelsView() {
  const q = new URLSearchParams(location.hash.split("?")[1] || "");
  const page = await api(`/api/models?size=20&page=${q.get("page") || 0}&status=${q.get("status") || ""}`);
  const rows = page.content.map((m) => `<tr data-uuid="${esc(m.uuid)}"><td><a href="#/model/${esc(m.uuid)}">${esc(m.model_no)}</a></td>
    <td class="status">${badge(m.status_name)}</td><td>${badge(m.step1_state_name)} ${esc(m.step1_duration)}</td>
    <td>${badge(m.step2_state_name)} ${esc(m.step2_duration)}</td><td>${esc(m.best_epoch || "-")}</td>
    <td class="err">${esc(m.last_error)}</td><td>${buttons(m)}</td></tr>`).join("");
  return `<h2>Models (${page.totalElements})</h2>${newModelForm()}<p id="msg" class="err"></p>
    <table><tr><th>model</th><th>status</th><th>step 1</th><th>step 2</th><th>best epoch</th><th>last error</th><th></th></tr>${rows}</table>
    <p>page ${Number(q.get("page") || 0) + 1} / ${Math.max(page.totalPages, 1)}</p>`;
}
function newModelForm() {
  if (role === "viewer") return "";
  return `<form id="create"><input name="model_no" placeholder="model no"><input name="epochs" value="5" size="3"> epochs
    <button>Create</button></form>`;
}

function chart(rows, key) {
  // Inline SVG: one polyline per split for a metric, scaled to the box.
  const pts = rows.filter((r) => r.values && key in r.values);
  if (!pts.length) return `<svg class="chart" width="420" height="160"></svg>`;
  const xs = pts.map((r) => r.epoch), ys = pts.map((r) => r.values[key]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs) || 1, Math.min(...ys), Math.max(...ys)];
  const sx = (x) => 30 + (x - x0) / ((x1 - x0) || 1) * 370, sy = (y) => 140 - (y - y0) / ((y1 - y0) || 1) * 120;
  const lines = ["train", "val", "test"].map((split, i) => {
    const p = pts.filter((r) => r.split === split).map((r) => `${sx(r.epoch)},${sy(r.values[key])}`).join(" ");
    return p ? `<polyline fill="none" stroke="${["#1e88e5", "#e53935", "#2e7d32"][i]}" stroke-width="2" points="${p}"/>` : "";
  }).join("");
  return `<svg class="chart" data-points="${pts.length}" width="420" height="160"><text x="30" y="14">${esc(key)}</text>${lines}</svg>`;
}

async function modelView(uuid) {
  const m = await api(`/api/models/${uuid}`);
  const jobs = await api(`/api/jobs?model=${uuid}&size=50`);
  let rows = [];
  for (const j of jobs.content) rows = rows.concat((await api(`/api/jobs/${j.job_id}/metrics`)).rows || []);
  const keys = [...new Set(rows.flatMap((r) => Object.keys(r.values || {})))].slice(0, 4);
  return `<h2>Model ${esc(m.model_no)} <span class="status">${badge(m.status_name)}</span></h2><p id="msg" class="err"></p>
    <p>step 1 ${badge(m.step1_state_name)} ${esc(m.step1_duration)} · step 2 <span class="step2">${badge(m.step2_state_name)}</span> ${esc(m.step2_duration)}
    · best epoch <b id="best">${esc(m.best_epoch || "-")}</b></p><p>${buttons(m)}</p><p class="err">${esc(m.last_error)}</p>
    <div id="charts">${keys.map((k) => chart(rows, k)).join(" ")}</div>
    <h3>Attempts</h3><table><tr><th>job</th><th>status</th><th>node</th><th>exit</th><th>error</th></tr>
    ${jobs.content.map((j) => `<tr><td>${esc(j.job_id)}</td><td>${esc(j.status_name)}</td><td>${esc(j.node)}</td>
      <td>${esc(j.exit_code)}</td><td class="why">${why(j)}</td></tr>`).join("")}</table>`;
}

// Why a job waits (QUEUED: its pending code and reason) or how it ended.
const why = (j) => j.status_name === "QUEUED" && j.pending_code
  ? `<span class="pending" data-code="${esc(j.pending_code)}"><b>${esc(j.pending_code)}</b> ${esc(j.pending_reason)}</span>`
  : esc(j.error_message);
// The job's group: its pipeline step or its place in an array, linked to the group's page.
const group = (j) => j.pipeline_id ? `<a href="#/pipeline/${esc(j.pipeline_id)}">${esc(j.step || j.pipeline_id)}</a>`
  : j.array_id ? `<a href="#/array/${esc(j.array_id)}">${esc(j.array_id)}[${esc(j.array_index ?? 0)}]</a>` : "";

async function jobsView() {
  const page = await api("/api/jobs?size=50");
  return `<h2>Jobs (${page.totalElements})</h2><table><tr><th>job</th><th>name</th><th>group</th><th>status</th><th>node</th><th>GPUs</th><th>exit</th><th>reason</th></tr>
    ${page.content.map((j) => `<tr data-job="${esc(j.job_id)}"><td>${esc(j.job_id)}</td><td>${esc(j.name)}</td><td>${group(j)}</td><td class="status">${badge(j.status_name)}</td><td>${esc(j.node)}</td>
    <td>${esc((j.gpu_indices || []).join(","))}</td><td>${esc(j.exit_code)}</td><td class="why">${why(j)}</td></tr>`).join("")}</table>`;
}

async function pipelineView(id) {
  const p = await api(`/api/pipelines/${id}`);
  return `<h2>Pipeline ${esc(p.name)} <span class="status">${badge(p.state)}</span></h2>
    <table><tr><th>step</th><th>after</th><th>job</th><th>status</th><th>reason</th></tr>
    ${(p.steps || []).map((st) => `<tr data-step="${esc(st.name)}"><td>${esc(st.name)}${st.shadow ? " <i>shadow</i>" : ""}</td>
      <td>${esc((st.after || []).join(", "))}</td><td>${esc(st.job_id)}</td><td class="status">${badge(st.status_name)}</td>
      <td class="why">${esc(st.reason)}</td></tr>`).join("")}</table>`;
}

async function arrayView(id) {
  const a = await api(`/api/arrays/${id}`);
  const jobs = a.jobs || [];
  return `<h2>Array ${esc((jobs[0] || {}).name || id)}</h2><table><tr><th>index</th><th>job</th><th>status</th><th>reason</th></tr>
    ${jobs.map((j) => `<tr data-job="${esc(j.job_id)}"><td>${esc(j.array_index ?? 0)}</td><td>${esc(j.job_id)}</td>
      <td class="status">${badge(j.status_name)}</td><td class="why">${why(j)}</td></tr>`).join("")}</table>`;
}

async function nodesView() {
  const {nodes = []} = await api("/api/nodes");
  return `<h2>Nodes</h2>` + nodes.map((n) => `<h3>${esc(n.name)} <small>${esc(n.state_name || n.state)}</small>
    ${role === "admin" ? `<button data-node="${esc(n.name)}" data-op="drain">drain</button><button data-node="${esc(n.name)}" data-op="undrain">undrain</button>` : ""}</h3>
    <p>${esc(Object.entries(n.labels || {}).map(([k, v]) => k + "=" + v).join(" "))}</p>
    <table><tr><th>GPU</th><th>name</th><th>util %</th><th>memory</th><th>temp °C</th><th>power W</th><th>health</th><th>job</th><th>processes</th></tr>
    ${(n.gpus || []).map((g) => `<tr><td>${esc(g.index ?? 0)}</td><td>${esc(g.name)}</td><td>${esc(g.utilization_gpu ?? 0)}</td>
      <td>${esc(Math.round((g.memory_used_bytes || 0) / 2 ** 20))} / ${esc(Math.round((g.memory_total_bytes || 0) / 2 ** 20))} MiB</td><td>${esc(g.temperature_c)}</td><td>${esc(g.power_w)}</td>
      <td>${esc((g.healthy ? "ok" : "unhealthy") + (g.health_reason ? " (" + g.health_reason + ")" : ""))}</td><td>${esc(g.assigned_job_id)}</td>
      <td>${esc((g.processes || []).map((p) => `${p.kind} ${p.pid}${p.job_id ? " of " + p.job_id : ""}`).join(", "))}</td></tr>`).join("")}</table>`).join("");
}

async function render() {
  const h = location.hash || "#/models";
  try {
    const html = h.startsWith("#/model/") ? await modelView(h.slice(8)) : h.startsWith("#/jobs") ? await jobsView()
      : h.startsWith("#/pipeline/") ? await pipelineView(h.slice(11)) : h.startsWith("#/array/") ? await arrayView(h.slice(8))
      : h.startsWith("#/nodes") ? await nodesView() : await modelsView();
    $("#view").innerHTML = html;
  } catch (e) { $("#view").innerHTML = `<p class="err">${esc(e.message)}</p>`; }
}

document.addEventListener("click", async (ev) => {
  const b = ev.target.closest("button[data-act]");
  if (b) return act(b);
  const n = ev.target.closest("button[data-node]");
  if (n) { await api(`/api/nodes/${n.dataset.node}/${n.dataset.op}`, "POST").catch(() => {}); render(); }
});
document.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (ev.target.id === "signin") { token = $("#token").value; sessionStorage.setItem("token", token); return start(); }
  const f = new FormData(ev.target), n = Number(f.get("epochs") || 5);
  const body = {model_no: f.get("model_no"), params_json: JSON.stringify({total_epoch: n, epoch_seconds: 0.3}),
    spec: {command: ["python3", "-m", "gpufleet.trainer"], total_epoch: n}, gpus: 1};
  const r = await fetch("/api/models", {method: "POST", headers: {"Content-Type": "application/json", ...(token ? {Authorization: "Bearer " + token} : {})}, body: JSON.stringify(body)});
  if (!r.ok) $("#msg").textContent = (await r.json()).message; else render();
});

async function start() {
  try { role = (await api("/api/whoami")).role; } catch { role = "viewer"; }
  $("#who").textContent = role;
  render();
}
window.addEventListener("hashchange", render);
// One event stream per tab; the server polls the coordinator once for all tabs.
new EventSource("/api/events").onmessage = () => render();
start();
