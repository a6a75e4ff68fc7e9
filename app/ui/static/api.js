// The daemon's HTTP API as the page uses it: every request carries the bearer token (in the
// Authorization header, never in a URL) and the namespace header. Server-sent events are
// read with fetch() and a stream parser rather than EventSource, which cannot send headers.

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

export class Api {
  constructor(token, namespace, onUnauthorized) {
    this.token = token;
    this.namespace = namespace;
    this.onUnauthorized = onUnauthorized;
  }

  headers(extra = {}) {
    const headers = { "Cargohold-Namespace": this.namespace, ...extra };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    return headers;
  }

  // One request; the parsed JSON body (or text, or null for 204). A failure throws ApiError
  // with the problem's detail; a 401 also tells the page the token no longer works.
  async request(method, path, body, { signal, accept } = {}) {
    const response = await this.open(method, path, body, { signal, accept });
    if (response.status === 204) return null;
    const type = response.headers.get("content-type") || "";
    return type.includes("json") ? response.json() : response.text();
  }

  // The response, its status checked, its body not read (for streams).
  async open(method, path, body, { signal, accept, lastEventId } = {}) {
    const extra = {};
    if (body !== undefined) extra["Content-Type"] = "application/json";
    if (accept) extra.Accept = accept;
    if (lastEventId) extra["Last-Event-ID"] = lastEventId;
    const response = await fetch(path, {
      method,
      headers: this.headers(extra),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
    });
    if (!response.ok) {
      let detail = response.statusText;
      try {
        detail = (await response.json()).detail || detail;
      } catch {
        // not problem+json: the status line says it
      }
      if (response.status === 401 && this.onUnauthorized) this.onUnauthorized(detail);
      throw new ApiError(response.status, detail);
    }
    return response;
  }

  // Server-sent events from `path`: yields {event, data, id} until the stream ends.
  async *events(method, path, body, options = {}) {
    const response = await this.open(method, path, body, { ...options, accept: "text/event-stream" });
    yield* sseFrames(response.body);
  }
}

// The SSE wire format (HTML Living Standard 9.2.6): lines end with CRLF, LF or CR; a blank
// line ends a frame; `:` starts a comment (the daemon's heartbeats).
export async function* sseFrames(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let frame = { event: "message", data: [], id: null };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      for (;;) {
        const end = buffer.search(/\r\n|\r|\n/);
        // A CR at the very end may be half of a CRLF whose LF is in the next chunk.
        if (end < 0 || (buffer[end] === "\r" && end === buffer.length - 1)) break;
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
        if (line === "") {
          if (frame.data.length) yield { event: frame.event, data: frame.data.join("\n"), id: frame.id };
          frame = { event: "message", data: [], id: null };
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") frame.event = text;
          else if (field === "data") frame.data.push(text);
          else if (field === "id") frame.id = text;
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// Prometheus text format, only the samples of `names`: [{name, labels, value}].
export function parseMetrics(text, names) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match || !names.has(match[1])) continue;
    const labels = {};
    for (const pair of (match[3] || "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[pair[1]] = pair[2].replace(/\\n/g, "\n").replace(/\\"/g, '"').replace(/\\\\/g, "\\");
    }
    samples.push({ name: match[1], labels, value: Number(match[4]) });
  }
  return samples;
}

// base64url without padding, as the Kubernetes bearer-token subprotocol wants it.
export function base64url(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

// A path segment for a name that may hold slashes (image names): each part encoded.
export function pathOf(name) {
  return name.split("/").map(encodeURIComponent).join("/");
}
