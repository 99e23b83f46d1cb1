// The console's only way to the server: the public REST API, with the customer's key in the
// Authorization header. The key lives in sessionStorage (gone with the tab) and never in a URL.

const KEY = "sensortasks.key";

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "error";
    this.details = error.details;
  }
}

export const session = {
  key: () => sessionStorage.getItem(KEY),
  login: (key) => sessionStorage.setItem(KEY, key.trim()),
  logout: () => sessionStorage.removeItem(KEY),
};

function headers(extra = {}) {
  const key = session.key();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

// Query parameters from an object: arrays repeat the parameter, empty values are left out.
export function query(params = {}) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item !== undefined && item !== null && item !== "") search.append(name, String(item));
    }
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

export async function request(method, path, { params, body } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(`${path}${query(params)}`, init);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export const get = (path, params) => request("GET", path, { params });
export const post = (path, body) => request("POST", path, { body });
export const del = (path) => request("DELETE", path);

// Server-sent events from GET /v1/events, read with fetch (EventSource cannot send headers).
// Reconnects after `retryMs` with Last-Event-ID, so nothing is missed across a reconnect.
export function follow(onEvent, onState, { retryMs = 1000 } = {}) {
  const stop = new AbortController();
  let lastId = null;

  function parse(block) {
    const fields = {};
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      fields[name] = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    }
    if ("id" in fields) lastId = fields.id;
    if (fields.data !== undefined) onEvent(JSON.parse(fields.data));
  }

  async function once() {
    const extra = lastId === null ? {} : { "Last-Event-ID": lastId };
    const response = await fetch("/v1/events", { headers: headers(extra), signal: stop.signal });
    if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
    onState("live");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        parse(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  }

  (async () => {
    while (!stop.signal.aborted) {
      try {
        await once();
        onState("reconnecting");
      } catch (error) {
        if (stop.signal.aborted) return;
        onState(error instanceof ApiError && error.status === 401 ? "unauthorized" : "reconnecting");
        if (error instanceof ApiError && error.status === 401) return;
      }
      await new Promise((resolve) => setTimeout(resolve, retryMs));
    }
  })();
  return () => stop.abort();
}
