// The comfyfleet dashboard: a hash router over five views (workflows, one workflow, run,
// gallery, runners) on the public REST API. No build step; nothing goes through innerHTML.

import * as api from "./api.js";
import { bytes, h, mount, safeUrl, statusBadge, when } from "./dom.js";

const STATUSES = ["accepted", "uploaded", "queued", "running", "completed", "failed", "cancelled", "invalid"];
const TERMINAL = new Set(["completed", "failed", "cancelled", "invalid"]);
const LIST_REFRESH_MS = 5000;
const RUNNERS_REFRESH_MS = 10000;
const MAX_LIVE_ROWS = 5;

const view = document.getElementById("view");
const nav = document.getElementById("nav");
let cleanup = () => {};

// --- shell -------------------------------------------------------------------

function errorBox(err) {
  const details = (err.details || []).map((d) => h("li", {}, describe(d)));
  return h("div", { class: "error", role: "alert" },
    h("strong", {}, err.status ? `${err.status}: ` : ""), err.message || String(err),
    details.length ? h("ul", {}, details) : null);
}

function describe(detail) {
  if (detail === null || typeof detail !== "object") return String(detail);
  return Object.entries(detail).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
}

async function signedIn() {
  try {
    const user = await api.get("/v1/user");
    mount(nav,
      h("a", { href: "#/workflows" }, "Workflows"),
      h("a", { href: "#/run" }, "Run"),
      h("a", { href: "#/gallery" }, "Gallery"),
      h("a", { href: "#/runners" }, "Runners"),
      h("span", { class: "user" }, `${user.name || user.email || "signed in"} (${user.tier})`),
      h("button", { class: "link", id: "sign-out", onclick: signOut }, "Sign out"));
    return true;
  } catch (err) {
    return false;
  }
}

function signOut(message) {
  api.token.clear();
  mount(nav);
  showSignIn(typeof message === "string" ? message : "");
}

function showSignIn(message) {
  cleanup();
  cleanup = () => {};
  const input = h("input", { id: "token", type: "password", autocomplete: "off", required: true,
                             placeholder: "cf_…", size: 50 });
  const status = h("div", {}, message ? h("div", { class: "error" }, message) : null);
  const form = h("form", { id: "sign-in", class: "card narrow" },
    h("h2", {}, "Sign in"),
    h("label", { for: "token" }, "API token"), input,
    h("p", { class: "hint" }, "The token stays in this tab (sessionStorage) and is sent as a Bearer header."),
    h("button", { type: "submit" }, "Sign in"), status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    api.token.set(input.value.trim());
    if (await signedIn()) {
      if (!location.hash || location.hash === "#/") location.hash = "#/workflows";
      else route();
    } else {
      api.token.clear();
      mount(status, h("div", { class: "error" }, "That token was not accepted."));
    }
  });
  mount(view, form);
  input.focus();
}

async function route() {
  cleanup();
  cleanup = () => {};
  if (!api.token.get()) { showSignIn(""); return; }
  const [, name, arg] = (location.hash || "#/workflows").split("?")[0].split("/");
  for (const link of nav.querySelectorAll("a")) {
    link.classList.toggle("active", link.getAttribute("href") === `#/${name}`);
  }
  const views = { workflows: workflowsView, workflow: workflowView, run: runView, gallery: galleryView,
                  runners: runnersView };
  const render = views[name] || workflowsView;
  const controller = new AbortController();
  const timers = [];
  cleanup = () => { controller.abort(); timers.forEach(clearInterval); };
  mount(view, h("p", { class: "hint" }, "Loading…"));
  try {
    await render({ arg: arg ? decodeURIComponent(arg) : "", signal: controller.signal,
                   every: (ms, fn) => timers.push(setInterval(() => { if (!document.hidden) fn(); }, ms)) });
  } catch (err) {
    if (!controller.signal.aborted) mount(view, errorBox(err));
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("comfyfleet:unauthorized", () => signOut("Your token was refused; sign in again."));

// --- workflows ---------------------------------------------------------------

async function workflowsView({ signal, every }) {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  let status = params.get("status") || "";
  let page = 1;
  const perPage = 20;
  const filter = h("select", { id: "status-filter" },
    h("option", { value: "" }, "all statuses"),
    STATUSES.map((s) => h("option", { value: s, selected: s === status }, s)));
  const body = h("tbody");
  const pager = h("div", { class: "pager" });
  const live = new Map(); // workflow id -> AbortController of its SSE reader
  signal.addEventListener("abort", () => live.forEach((c) => c.abort()));

  filter.addEventListener("change", () => {
    status = filter.value;
    page = 1;
    history.replaceState(null, "", status ? `#/workflows?status=${encodeURIComponent(status)}` : "#/workflows");
    refresh();
  });
  mount(view,
    h("div", { class: "toolbar" }, h("h2", {}, "Workflows"), h("label", {}, "Status ", filter),
      h("a", { class: "button", href: "#/run" }, "Run a workflow")),
    h("table", { id: "workflows" },
      h("thead", {}, h("tr", {}, ["Name", "Status", "Tags", "Created", "Completed"].map((t) => h("th", {}, t)))),
      body),
    pager);

  async function refresh() {
    const reply = await api.get("/v1/workflow", { page, per_page: perPage, status });
    if (signal.aborted) return;
    mount(body, reply.workflows.length ? reply.workflows.map(row)
      : h("tr", {}, h("td", { colspan: 5, class: "hint" }, "No workflows yet.")));
    const pages = Math.max(1, Math.ceil(reply.total / perPage));
    mount(pager,
      h("button", { disabled: page <= 1, onclick: () => { page--; refresh(); } }, "‹ Newer"),
      ` page ${page} of ${pages} (${reply.total}) `,
      h("button", { disabled: page >= pages, onclick: () => { page++; refresh(); } }, "Older ›"));
    follow(reply.workflows.filter((w) => !TERMINAL.has(w.status)));
  }

  function row(w) {
    return h("tr", { dataset: { id: w.id } },
      h("td", {}, h("a", { href: `#/workflow/${encodeURIComponent(w.id)}` }, w.name)),
      h("td", { class: "status" }, statusBadge(w.status)),
      h("td", {}, (w.tags || []).map((t) => h("span", { class: "tag" }, t))),
      h("td", {}, when(w.created_at)),
      h("td", { class: "completed" }, when(w.completed_at)));
  }

  // Live rows: the SSE stream of each unfinished workflow on the page (a few at a time).
  function follow(active) {
    for (const w of active) {
      if (live.has(w.id) || live.size >= MAX_LIVE_ROWS) continue;
      const controller = new AbortController();
      live.set(w.id, controller);
      api.subscribe(w.id, (frame) => {
        if (frame.event !== "status" && frame.event !== "snapshot") return;
        const cell = body.querySelector(`tr[data-id="${CSS.escape(w.id)}"] .status`);
        if (cell) mount(cell, statusBadge(frame.data.status));
        const done = body.querySelector(`tr[data-id="${CSS.escape(w.id)}"] .completed`);
        if (done) mount(done, when(frame.data.completed_at));
      }, controller.signal).catch(() => {}).finally(() => live.delete(w.id));
    }
  }

  await refresh();
  every(LIST_REFRESH_MS, () => refresh().catch(() => {}));
}

// --- one workflow --------------------------------------------------------------

async function workflowView({ arg: id, signal }) {
  const path = `/v1/workflow/${encodeURIComponent(id)}`;
  let record = await api.get(path);
  const header = h("div", { class: "card" });
  const progress = h("div", { id: "progress", class: "progress" });
  const errors = h("div", { id: "node-errors" });
  const timeline = h("ol", { id: "timeline", class: "timeline" });
  const gallery = h("div", { id: "outputs", class: "gallery" });
  const seen = new Set();

  function renderHeader() {
    const cancellable = !TERMINAL.has(record.status);
    mount(header,
      h("div", { class: "toolbar" },
        h("h2", {}, record.name), h("span", { id: "workflow-status" }, statusBadge(record.status)),
        cancellable ? h("button", { id: "cancel", onclick: cancel }, "Cancel") : null),
      h("dl", { class: "facts" },
        fact("ID", record.id), fact("Tags", (record.tags || []).join(", ") || "—"),
        fact("Priority", record.priority), fact("Attempt", record.attempt),
        fact("Runner", record.runner_id || "—"), fact("Queue number", record.queue_number ?? "—"),
        fact("Created", when(record.created_at)), fact("Started", when(record.started_at)),
        fact("Completed", when(record.completed_at))),
      (record.workflow_params || []).length ? h("table", { class: "params" },
        h("thead", {}, h("tr", {}, h("th", {}, "Placeholder"), h("th", {}, "Value"))),
        h("tbody", {}, record.workflow_params.map(([p, v]) => h("tr", {}, h("td", {}, p), h("td", {}, v))))) : null);
    const failure = record.exception_type || record.exception_message || (record.node_errors || []).length;
    mount(errors, failure ? h("div", { class: "error" },
      h("strong", {}, record.exception_type || "Error"),
      record.error_node ? ` in node ${record.error_node}` : "",
      record.exception_message ? h("pre", {}, record.exception_message) : null,
      (record.node_errors || []).length ? h("table", {},
        h("thead", {}, h("tr", {}, ["Node", "Class", "Input", "Type", "Message", "Details"].map((t) => h("th", {}, t)))),
        h("tbody", {}, record.node_errors.map((e) => h("tr", {},
          [e.node_id, e.class_type, e.input_name || "", e.type, e.message, e.details].map((v) => h("td", {}, v)))))) : null)
      : null);
  }

  async function cancel() {
    try {
      await api.send("POST", `${path}/cancel`);
    } catch (err) {
      header.appendChild(errorBox(err));
    }
  }

  function addOutput(out) {
    if (seen.has(out.id)) return;
    seen.add(out.id);
    gallery.appendChild(outputCard(out));
  }

  async function loadOutputs() {
    const outs = await api.get(`${path}/outputs`);
    if (signal.aborted) return;
    seen.clear();
    mount(gallery);
    outs.forEach(addOutput);
    if (!outs.length) mount(gallery, h("p", { class: "hint" }, "Completed without outputs."));
  }

  function onFrame(frame) {
    const d = frame.data || {};
    let text = frame.event;
    if (frame.event === "snapshot" || frame.event === "status") {
      text = `status: ${d.status}${d.queue_number != null && d.status === "queued" ? ` (queue #${d.queue_number})` : ""}`;
      if (d.cause) text += ` (${d.cause.exception_type}: ${d.cause.exception_message})`;
      mount(header.querySelector("#workflow-status"), statusBadge(d.status));
      if (TERMINAL.has(d.status)) mount(progress);
    } else if (frame.event === "progress") {
      mount(progress, h("label", {}, `${d.node_type || "node"} ${d.node_id}: ${d.value}/${d.max}`),
        h("progress", { max: d.max, value: d.value }));
      text = `progress: node ${d.node_id} ${d.value}/${d.max}`;
    } else if (frame.event === "executing") {
      mount(progress, h("label", {}, `executing node ${d.node_id}${d.node_type ? ` (${d.node_type})` : ""}`));
      text = `executing: node ${d.node_id}${d.node_type ? ` (${d.node_type})` : ""}`;
    } else if (frame.event === "output") {
      addOutput(d);
      text = `output: ${d.filename} (${d.content_type}, ${bytes(d.size)})`;
    } else if (frame.event === "log") {
      text = `log ${d.level}: ${d.message}`;
    }
    timeline.appendChild(h("li", { class: `event-${frame.event}` },
      h("span", { class: "seq" }, frame.id ?? ""), " ", text));
  }

  renderHeader();
  mount(view, header, progress, errors,
    h("div", { class: "columns" },
      h("section", {}, h("h3", {}, "Timeline"), timeline),
      h("section", {}, h("h3", {}, "Outputs"), gallery)));

  // Replays every event from the start, then follows live; ends after the terminal status.
  await api.subscribe(id, onFrame, signal, 0).catch((err) => { if (!signal.aborted) view.appendChild(errorBox(err)); });
  if (signal.aborted) return;
  record = await api.get(path);
  if (signal.aborted) return;
  renderHeader();
  if (record.status === "completed") await loadOutputs();
}

function fact(name, value) {
  return [h("dt", {}, name), h("dd", {}, value)];
}

function outputCard(out) {
  const src = safeUrl(out.src);
  const type = out.content_type || "";
  let media;
  if (type.startsWith("image/")) media = h("img", { src, alt: out.filename });
  else if (type.startsWith("video/")) media = h("video", { src, controls: true, preload: "metadata" });
  else if (type.startsWith("audio/")) media = h("audio", { src, controls: true, preload: "metadata" });
  else media = h("div", { class: "file" }, type || "file");
  return h("figure", { class: "output", dataset: { type } }, media,
    h("figcaption", {}, h("a", { href: src, target: "_blank", rel: "noopener" }, out.filename),
      ` ${bytes(out.size)}`));
}

// --- run a workflow or a template --------------------------------------------

async function runView({ signal }) {
  const templates = (await api.get("/v1/template", { per_page: 100 })).templates;
  if (signal.aborted) return;
  const source = h("select", { id: "source" },
    h("option", { value: "" }, "Upload a workflow (API-format JSON)"),
    templates.map((t) => h("option", { value: t.id }, `Template: ${t.name}`)));
  const fileInput = h("input", { id: "workflow-file", type: "file", accept: ".json,application/json" });
  const fileRow = h("div", { class: "row" }, h("label", { for: "workflow-file" }, "Workflow JSON"), fileInput);
  const about = h("p", { class: "hint" });
  const name = h("input", { id: "name", required: true, maxlength: 200 });
  const tags = h("input", { id: "tags", placeholder: "gpu, fast" });
  const priority = h("select", { id: "priority" }, ["normal", "low", "high"].map((p) => h("option", { value: p }, p)));
  const fields = h("fieldset", { id: "fields" });
  const result = h("div");
  let workflowText = null;
  let current = []; // placeholders of the chosen graph

  function showFields(list) {
    current = list;
    mount(fields, h("legend", {}, "Parameters"),
      list.length ? list.map(fieldRow) : h("p", { class: "hint" }, "This graph has no parameters."));
  }

  source.addEventListener("change", async () => {
    mount(result);
    fileRow.hidden = Boolean(source.value);
    if (!source.value) { showFields([]); mount(about); return; }
    try {
      const t = await api.get(`/v1/template/${encodeURIComponent(source.value)}`);
      mount(about, t.description);
      if (!name.value) name.value = t.name;
      showFields(api.placeholders(t.body));
    } catch (err) {
      mount(result, errorBox(err));
    }
  });
  fileInput.addEventListener("change", async () => {
    mount(result);
    const file = fileInput.files[0];
    if (!file) return;
    workflowText = await file.text();
    try {
      showFields(api.placeholders(JSON.parse(workflowText)));
      if (!name.value) name.value = file.name.replace(/\.json$/i, "");
    } catch (err) {
      mount(result, errorBox(new Error(`${file.name} is not JSON: ${err.message}`)));
    }
  });

  const form = h("form", { id: "run-form", class: "card" },
    h("h2", {}, "Run"),
    h("div", { class: "row" }, h("label", { for: "source" }, "What"), source), about, fileRow,
    h("div", { class: "row" }, h("label", { for: "name" }, "Name"), name),
    h("div", { class: "row" }, h("label", { for: "tags" }, "Tags"), tags),
    h("div", { class: "row" }, h("label", { for: "priority" }, "Priority"), priority),
    fields, h("button", { type: "submit", id: "submit" }, "Run"), result);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData();
    data.append("name", name.value);
    if (tags.value.trim()) data.append("tags", tags.value);
    data.append("priority", priority.value);
    if (!source.value) {
      if (workflowText === null) { mount(result, errorBox(new Error("Choose a workflow JSON file."))); return; }
      data.append("workflow_json", new Blob([workflowText], { type: "application/json" }), "workflow.json");
    }
    for (const p of current) {
      const input = fields.querySelector(`[name="${CSS.escape(p.field)}"]`);
      if (p.kind === "file") {
        if (input.files[0]) data.append(p.field, input.files[0], input.files[0].name);
      } else if (input.value !== "" || p.default === null) {
        data.append(p.field, input.value);
      }
    }
    const submit = form.querySelector("#submit");
    submit.disabled = true;
    mount(result, h("p", { class: "hint" }, "Uploading…"));
    try {
      const path = source.value ? `/v1/template/${encodeURIComponent(source.value)}/run` : "/v1/workflow";
      const created = await api.send("POST", path, data);
      location.hash = `#/workflow/${encodeURIComponent(created.id)}`;
    } catch (err) {
      mount(result, errorBox(err));
    } finally {
      submit.disabled = false;
    }
  });
  showFields([]);
  mount(view, form);
}

function fieldRow(p) {
  const id = `field-${p.kind}-${p.name}`;
  let input;
  if (p.kind === "choice") {
    input = h("select", { id, name: p.field }, p.options.map((o) => h("option", { value: o }, o)));
  } else if (p.kind === "file") {
    input = h("input", { id, name: p.field, type: "file", required: true });
  } else {
    input = h("input", { id, name: p.field, placeholder: p.default ?? "", required: p.default === null });
  }
  return h("div", { class: "row" },
    h("label", { for: id }, p.name, h("small", {}, ` ${p.kind}, node ${p.node_id} ${p.input}`)), input);
}

// --- gallery -------------------------------------------------------------------

async function galleryView({ signal }) {
  const list = await api.get("/v1/workflow", { status: "completed", per_page: 12 });
  const sets = await Promise.all(list.workflows.map(async (w) => {
    try { return { w, outs: await api.get(`/v1/workflow/${encodeURIComponent(w.id)}/outputs`) }; }
    catch { return { w, outs: [] }; }
  }));
  if (signal.aborted) return;
  const cards = sets.flatMap(({ w, outs }) => outs.map((out) => {
    const card = outputCard(out);
    card.querySelector("figcaption").prepend(
      h("a", { href: `#/workflow/${encodeURIComponent(w.id)}`, class: "workflow-link" }, w.name), " · ");
    return card;
  }));
  mount(view, h("h2", {}, "Gallery"),
    h("p", { class: "hint" }, "Outputs of the 12 most recent completed workflows. Links expire after a few minutes; reload to renew them."),
    h("div", { id: "gallery", class: "gallery" }, cards.length ? cards : h("p", { class: "hint" }, "No outputs yet.")));
}

// --- runners -------------------------------------------------------------------

async function runnersView({ signal, every }) {
  const body = h("tbody");
  const message = h("div");
  mount(view, h("h2", {}, "Runners"), message,
    h("table", { id: "runners" },
      h("thead", {}, h("tr", {}, ["Name", "Connection", "Status", "Tags", "Slots", "In flight", "ComfyUI",
                                  "Last seen", ""].map((t) => h("th", {}, t)))),
      body));

  async function refresh() {
    const reply = await api.get("/v1/runner", { per_page: 100 });
    if (signal.aborted) return;
    mount(body, reply.runners.length ? reply.runners.map(row)
      : h("tr", {}, h("td", { colspan: 9, class: "hint" }, "No runners.")));
  }

  function row(r) {
    const next = r.status === "active" ? "disabled" : "active";
    return h("tr", { dataset: { id: r.id } },
      h("td", {}, h("span", { title: r.endpoint || "" }, r.name)),
      h("td", {}, h("span", { class: `badge conn-${r.connection === "online" ? "online" : "offline"}` }, r.connection)),
      h("td", {}, r.status),
      h("td", {}, (r.tags || []).map((t) => h("span", { class: "tag" }, t))),
      h("td", {}, r.slots), h("td", {}, r.in_flight), h("td", {}, r.comfyui_version || "—"),
      h("td", {}, when(r.last_seen_at)),
      h("td", {}, h("button", { onclick: async () => {
        try {
          await api.send("PUT", `/v1/runner/${encodeURIComponent(r.id)}`, { status: next });
          await refresh();
        } catch (err) {
          mount(message, errorBox(err));
        }
      } }, next === "disabled" ? "Disable" : "Enable")));
  }

  await refresh();
  every(RUNNERS_REFRESH_MS, () => refresh().catch(() => {}));
}

// --- start -------------------------------------------------------------------

if (api.token.get() && await signedIn()) route();
else signOut("");
