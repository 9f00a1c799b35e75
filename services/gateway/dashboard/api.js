// The public REST API (API.md) from the browser: the token lives in sessionStorage and every
// request carries `Authorization: Bearer`. The SSE reader uses fetch() and a ReadableStream,
// because EventSource cannot send headers.

const TOKEN_KEY = "comfyfleet.token";

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.reason = body && body.reason;
    this.details = (body && body.details) || [];
  }
}

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || "",
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

function headers(extra = {}) {
  return { Authorization: `Bearer ${token.get()}`, ...extra };
}

async function parse(reply) {
  if (reply.status === 204) return null;
  const text = await reply.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = { message: text }; }
  if (!reply.ok) {
    if (reply.status === 401) window.dispatchEvent(new CustomEvent("comfyfleet:unauthorized"));
    throw new ApiError(reply.status, body);
  }
  return body;
}

export async function get(path, params = {}) {
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v != null));
  const url = query.toString() ? `${path}?${query}` : path;
  return parse(await fetchRetrying(url, { headers: headers() }));
}

const RETRIES = 3;
const MAX_RETRY_WAIT_MS = 15000;

/** fetch(), waiting out 429 and 503 (their Retry-After) a few times; only for safe requests. */
async function fetchRetrying(url, init) {
  for (let attempt = 0; ; attempt++) {
    const reply = await fetch(url, init);
    if ((reply.status !== 429 && reply.status !== 503) || attempt >= RETRIES) return reply;
    const seconds = Number(reply.headers.get("Retry-After"));
    const wait = Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : 1000 * 2 ** attempt;
    await new Promise((resolve) => setTimeout(resolve, Math.min(wait, MAX_RETRY_WAIT_MS)));
  }
}

export async function send(method, path, body) {
  const init = { method, headers: headers() };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  return parse(await fetch(path, init));
}

/**
 * Follows GET /v1/workflow/{id}/subscribe. Calls onFrame({id, event, data}) for each frame;
 * reconnects with Last-Event-ID after a dropped connection until the stream ends by itself
 * (after the terminal status) or `signal` aborts. Resolves when done. `from` = 0 replays every
 * event from the start; null starts with a snapshot of the workflow, then follows it live.
 */
export async function subscribe(workflowId, onFrame, signal, from = null) {
  let lastEventId = from;
  let failures = 0;
  while (!signal.aborted) {
    const extra = lastEventId === null ? {} : { "Last-Event-ID": String(lastEventId) };
    let reply;
    try {
      reply = await fetchRetrying(`/v1/workflow/${encodeURIComponent(workflowId)}/subscribe`,
                                  { headers: headers({ Accept: "text/event-stream", ...extra }), signal });
    } catch (err) {
      if (signal.aborted) return;
      if (++failures > 5) throw err;
      await sleep(1000 * failures, signal);
      continue;
    }
    if (!reply.ok) { await parse(reply); return; }
    let ended = false;
    try {
      for await (const frame of frames(reply.body)) {
        failures = 0;
        if (frame.id !== null) lastEventId = Number(frame.id);
        onFrame(frame);
      }
      ended = true; // the server closed the stream: the workflow reached a terminal state
    } catch (err) {
      if (signal.aborted) return;
      if (++failures > 5) throw err;
      await sleep(1000 * failures, signal);
    }
    if (ended) return;
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

/** Parses a text/event-stream body into frames {id, event, data (parsed JSON or text)}. */
async function* frames(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let frame = { id: null, event: "message", data: [] };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (frame.data.length) {
            const text = frame.data.join("\n");
            let data;
            try { data = JSON.parse(text); } catch { data = text; }
            yield { id: frame.id, event: frame.event, data };
          }
          frame = { id: null, event: "message", data: [] };
          continue;
        }
        if (line.startsWith(":")) continue; // keep-alive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "data") frame.data.push(value);
        else if (field === "event") frame.event = value;
        else if (field === "id") frame.id = value;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

// --- placeholders (the grammar of services/scheduler/core/placeholders.py) ---

const NAME = "[A-Za-z0-9_-]{1,255}";
const TEXT = new RegExp(`^\\$text\\(\\s*(${NAME})\\s*(?:,\\s*([\\s\\S]*?)\\s*)?\\)$`);
const CHOICE = new RegExp(`^[$#]choice\\(\\s*(${NAME})\\s*,([\\s\\S]*)\\)$`);
const FILE = new RegExp(`^\\$file\\(\\s*(${NAME})\\s*\\)$`);

/**
 * The form fields a workflow graph asks for, in node order, one per name:
 * [{kind: "text"|"choice"|"file", name, field ("$name"/"#name"), default, options, node_id, input}]
 */
export function placeholders(graph) {
  const found = new Map();
  if (!graph || typeof graph !== "object") return [];
  for (const [nodeId, node] of Object.entries(graph)) {
    const inputs = (node && node.inputs) || {};
    for (const [input, value] of Object.entries(inputs)) {
      if (typeof value !== "string") continue;
      let m;
      let field = null;
      if ((m = TEXT.exec(value))) field = { kind: "text", name: m[1], default: m[2] ?? null, options: [] };
      else if ((m = CHOICE.exec(value))) {
        field = { kind: "choice", name: m[1], default: null,
                  options: m[2].split(",").map((o) => o.trim()).filter(Boolean) };
      } else if ((m = FILE.exec(value))) field = { kind: "file", name: m[1], default: null, options: [] };
      if (!field || found.has(`${field.kind}:${field.name}`)) continue;
      field.field = (field.kind === "choice" ? "#" : "$") + field.name;
      found.set(`${field.kind}:${field.name}`, { ...field, node_id: nodeId, input });
    }
  }
  return [...found.values()];
}
