// A terminal into a running task: an exec process (a shell on a pseudo-terminal) added and
// started through the API, then attached over the daemon's WebSocket, which speaks
// Kubernetes' channel protocol v5 (DESIGN "Terminals and attach"): each message is one byte
// of channel (0 stdin, 1 stdout, 2 stderr, 3 status, 4 resize, 255 close) then the data.
// A browser cannot set headers on a WebSocket: the token goes as the subprotocol
// `base64url.bearer.authorization.k8s.io.<token>`, which the daemon takes out before it
// answers (it never echoes it), as Kubernetes clients do.

import { Terminal } from "./vendor/xterm.mjs";
import { FitAddon } from "./vendor/addon-fit.mjs";
import { base64url } from "./api.js";
import { adoptInlineStyles } from "./csp.js";

const STDIN = 0;
const STDOUT = 1;
const STDERR = 2;
const STATUS = 3;
const RESIZE = 4;
const V5 = "v5.channel.k8s.io";
const TOKEN_PROTOCOL = "base64url.bearer.authorization.k8s.io.";
const DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return "ui-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function framed(channel, payload) {
  const message = new Uint8Array(payload.length + 1);
  message[0] = channel;
  message.set(payload, 1);
  return message;
}

// Open a shell in task `taskId` inside `element`; returns {close()}. `onState(text)` is told
// what happens (connected, exited with N, closed).
export async function openTerminal(api, element, taskId, onState) {
  adoptInlineStyles();
  const container = await api.request("GET", `/containers/${encodeURIComponent(taskId)}`);
  const env = [...(container.spec?.process?.env || [DEFAULT_PATH])].filter((v) => !v.startsWith("TERM="));
  env.push("TERM=xterm-256color");
  const execId = randomId();
  const base = `/tasks/${encodeURIComponent(taskId)}/processes`;
  await api.request("POST", base, {
    exec_id: execId,
    process: { args: ["sh"], terminal: true, cwd: "/", env },
    stdin: true,
  });
  await api.request("POST", `${base}/${execId}/start`);

  const terminal = new Terminal({ cursorBlink: true, fontSize: 13, fontFamily: "DejaVu Sans Mono, monospace", scrollback: 2000 });
  const fit = new FitAddon();
  terminal.loadAddon(fit);
  terminal.open(element);
  fit.fit();

  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const query = new URLSearchParams({ stdin: "true", namespace: api.namespace });
  const protocols = [V5];
  if (api.token) protocols.push(TOKEN_PROTOCOL + base64url(api.token));
  const socket = new WebSocket(`${scheme}//${location.host}${base}/${execId}/attach?${query}`, protocols);
  socket.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  const send = (channel, payload) => {
    if (socket.readyState === WebSocket.OPEN) socket.send(framed(channel, payload));
  };
  const resize = () => send(RESIZE, encoder.encode(JSON.stringify({ Width: terminal.cols, Height: terminal.rows })));

  socket.addEventListener("open", () => {
    onState("connected");
    resize();
    terminal.focus();
  });
  socket.addEventListener("message", (message) => {
    const bytes = new Uint8Array(message.data);
    if (!bytes.length) return;
    const channel = bytes[0];
    if (channel === STDOUT || channel === STDERR) {
      terminal.write(bytes.subarray(1));
    } else if (channel === STATUS) {
      let status = {};
      try {
        status = JSON.parse(new TextDecoder().decode(bytes.subarray(1)));
      } catch {
        // not JSON: reported as unknown below
      }
      const cause = status.details?.causes?.find((c) => c.reason === "ExitCode");
      const code = status.status === "Success" ? 0 : cause ? cause.message : status.message || "?";
      onState(`exited with ${code}`);
    }
  });
  socket.addEventListener("close", (event) => {
    onState(event.code === 1000 ? "closed" : `closed (${event.code}${event.reason ? ": " + event.reason : ""})`);
  });
  const typed = terminal.onData((data) => send(STDIN, encoder.encode(data)));
  const resized = terminal.onResize(resize);
  const observer = new ResizeObserver(() => fit.fit());
  observer.observe(element);

  let exited = false;
  socket.addEventListener("close", () => {
    exited = true;
  });
  return {
    terminal,
    // Detaching would leave the shell running (several clients may attach): it is killed.
    async close() {
      observer.disconnect();
      typed.dispose();
      resized.dispose();
      if (socket.readyState <= WebSocket.OPEN) socket.close(1000);
      terminal.dispose();
      if (!exited) {
        await api.request("POST", `${base}/${execId}/kill`, { signal: "SIGKILL" }).catch(() => {});
      }
    },
  };
}
