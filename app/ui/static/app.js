// Cargohold's web view (DESIGN "The web view"): containers, tasks with live CPU and memory,
// images, networks and the event feed, kept current by the daemon's event stream; actions
// on tasks and images; a task's log and a terminal into it. It speaks the same HTTP API as
// every other client. The token is asked for once and kept in sessionStorage only (this tab);
// `cargohold ui` hands one over in the URL's fragment (#token=...), which never leaves the
// browser, and the page takes it out of the address bar at once.

import { Api, ApiError, parseMetrics, pathOf, sseFrames } from "./api.js";
import { drawChart } from "./chart.js";

const TOKEN_KEY = "cargohold.token";
const NAMESPACE_KEY = "cargohold.namespace";
const CHART_SECONDS = 300; // the chart's window: the last five minutes
const METRICS_EVERY_MS = 1000; // as the daemon's monitor polls by default
const STOP_SECONDS = 10; // SIGTERM, then SIGKILL after this long, as `cargohold stop`
const FEED_LENGTH = 500;
const METRIC_NAMES = new Set([
  "container_memory_usage_bytes", "container_memory_limit_bytes", "container_cpu_usage_seconds_total",
  "container_pids_current", "container_memory_oom_total",
]);

const $ = (selector) => document.querySelector(selector);

const state = {
  api: null,
  containers: new Map(), // id -> Container
  tasks: new Map(), // id -> Task
  exits: new Map(), // id -> {exit_status, oom_killed} of the last task of the container
  ooms: new Map(), // id -> the /tasks/oom event's data
  samples: new Map(), // "namespace/id" -> [{time, memory, limit, cpu, pids}]
  cpu: new Map(), // "namespace/id" -> {time, seconds, rate}: CPU rate from the cumulative counter
  view: "containers",
  panel: null, // {id, kind, abort?, terminal?}
  stream: null, // AbortController of the event stream
  timers: [],
  refreshes: new Map(), // what -> {timer, running, again}: reads of each list, one at a time
  namespaces: new Set(), // those that exist
};

// --- the token -------------------------------------------------------------------------

function takeTokenFromFragment() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, "", location.pathname + location.search);
  }
}

async function boot() {
  takeTokenFromFragment();
  $("#login-form").addEventListener("submit", onLogin);
  $("#forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) {
    showLogin("");
    return;
  }
  await connect(token, "the token kept for this tab was refused");
}

function showLogin(message) {
  stopAll();
  $("#main").hidden = true;
  $("#login").hidden = false;
  $("#forget").hidden = true;
  $("#namespace-field").hidden = true;
  $("#stream-state").hidden = true;
  $("#login-error").textContent = message;
  $("#token").focus();
}

async function onLogin(event) {
  event.preventDefault();
  const token = $("#token").value.trim();
  $("#login-error").textContent = "";
  await connect(token, "wrong token");
}

// Try `token` on GET /version; on success keep it and start, on 401 say `refused`.
async function connect(token, refused) {
  const api = new Api(token, sessionStorage.getItem(NAMESPACE_KEY) || "default", null);
  try {
    const version = await api.request("GET", "/version");
    $("#daemon").textContent = `${version.version} · ${version.snapshotter} · cgroup ${version.cgroup_mode}`;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(`The daemon refused it: ${refused} (401: ${error.detail}).`);
    } else {
      showLogin(`Cannot reach the daemon: ${error.message}`);
    }
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  api.onUnauthorized = (detail) => showLogin(`The daemon no longer accepts the token (401: ${detail}).`);
  state.api = api;
  $("#token").value = "";
  $("#login").hidden = true;
  $("#main").hidden = false;
  $("#forget").hidden = false;
  $("#namespace-field").hidden = false;
  await start();
}

// --- start and stop ----------------------------------------------------------------------

async function start() {
  $("#chart-minutes").textContent = String(CHART_SECONDS / 60);
  for (const button of document.querySelectorAll("#tabs button")) {
    button.onclick = () => showView(button.dataset.view);
  }
  $("#namespace").onchange = () => {
    sessionStorage.setItem(NAMESPACE_KEY, $("#namespace").value);
    state.api.namespace = $("#namespace").value;
    closePanel();
    state.containers.clear();
    state.tasks.clear();
    state.exits.clear();
    refreshAll();
  };
  $("#containers").onclick = onAction;
  $("#tasks").onclick = onAction;
  $("#images").onclick = onImageAction;
  $("#pull-form").onsubmit = onPull;
  $("#panel-close").onclick = closePanel;
  for (const button of document.querySelectorAll("#panel [data-panel]")) {
    button.onclick = () => state.panel && openPanel(state.panel.id, button.dataset.panel);
  }
  showView(location.hash.slice(1) || "containers");
  // The stream first: once its response has come, the daemon has subscribed it, so the lists
  // read after it miss no change.
  await followEvents();
  state.timers.push(setInterval(pollMetrics, METRICS_EVERY_MS));
  pollMetrics();
}

function stopAll() {
  if (state.stream) state.stream.abort();
  state.stream = null;
  for (const timer of state.timers) clearInterval(timer);
  state.timers = [];
  closePanel();
}

function showView(view) {
  if (!document.querySelector(`#view-${CSS.escape(view)}`)) view = "containers";
  state.view = view;
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${view}`;
  for (const button of document.querySelectorAll("#tabs button")) {
    button.classList.toggle("active", button.dataset.view === view);
  }
  if (location.hash !== `#${view}`) history.replaceState(null, "", `#${view}`);
  if (view === "networks") refresh("networks");
  if (view === "tasks") renderTasks();
}

// --- the event stream --------------------------------------------------------------------

// Resolves once the stream is open and the lists are read; then follows the stream,
// reconnecting with Last-Event-ID after a drop. Once the stream's response has come the
// daemon has subscribed it, so the lists read after that miss no change.
function followEvents() {
  const controller = new AbortController();
  state.stream = controller;
  let lastId = null;
  let opened;
  const ready = new Promise((resolve) => (opened = resolve));
  (async () => {
    let first = true;
    while (!controller.signal.aborted) {
      try {
        const response = await state.api.open("GET", "/events", undefined, {
          signal: controller.signal, accept: "text/event-stream", lastEventId: lastId,
        });
        setStreamState("live");
        if (first) {
          first = false;
          await refreshAll();
          opened();
        }
        for await (const frame of sseFrames(response.body)) {
          if (frame.id) lastId = frame.id;
          if (frame.event === "error") {
            // Events we were owed were pruned: read everything again, follow from now.
            lastId = null;
            await refreshAll();
            continue;
          }
          onEvent(JSON.parse(frame.data));
        }
      } catch (error) {
        if (controller.signal.aborted || (error instanceof ApiError && error.status === 401)) {
          opened();
          return;
        }
      }
      setStreamState("reconnecting");
      if (first) {
        first = false;
        await refreshAll();
        opened();
      }
      await sleep(1000);
    }
  })();
  return ready;
}

function setStreamState(text) {
  const pill = $("#stream-state");
  pill.hidden = false;
  pill.textContent = text === "live" ? "events: live" : "events: reconnecting";
  pill.classList.toggle("bad", text !== "live");
}

function onEvent(envelope) {
  addToFeed(envelope);
  const ours = envelope.namespace === state.api.namespace;
  const data = envelope.event || {};
  const topic = envelope.topic;
  if (topic.startsWith("/namespaces/")) refresh("namespaces");
  if (!ours) return;
  if (topic.startsWith("/containers/")) refresh("containers");
  else if (topic.startsWith("/images/")) refresh("images");
  else if (topic.startsWith("/tasks/")) {
    const id = data.container_id || data.id;
    if (topic === "/tasks/oom") onOom(id, data);
    if (topic === "/tasks/exit" && data.id === data.container_id) { // not an exec process's
      state.exits.set(id, data);
      const task = state.tasks.get(id);
      if (task) task.status = "stopped"; // shown at once; the list read next says the rest
      renderAll();
    }
    if (topic === "/tasks/create" || topic === "/tasks/start") state.ooms.delete(id);
    if (!topic.startsWith("/tasks/exec")) refresh("tasks");
  }
}

function onOom(id, data) {
  state.ooms.set(id, data);
  const limit = data.memory_limit_bytes ? ` (limit ${bytes(data.memory_limit_bytes)}` +
    `, highest use ${bytes(data.memory_max_usage_bytes)})` : "";
  notice(`OOM kill in ${id}${limit}`, "oom", `oom-${id}`);
  renderAll();
}

function addToFeed(envelope) {
  const body = $("#events tbody");
  const row = element("tr", { "data-id": envelope.id, "data-topic": envelope.topic }, [
    element("td", {}, [String(envelope.id)]),
    element("td", {}, [time(envelope.timestamp)]),
    element("td", {}, [envelope.namespace]),
    element("td", { class: topicClass(envelope.topic) }, [envelope.topic]),
    element("td", { class: "json" }, [JSON.stringify(envelope.event)]),
  ]);
  body.prepend(row);
  while (body.children.length > FEED_LENGTH) body.lastElementChild.remove();
}

function topicClass(topic) {
  if (topic === "/tasks/oom") return "topic oom";
  if (topic.endsWith("/delete") || topic === "/tasks/exit") return "topic gone";
  if (topic.endsWith("/create") || topic === "/tasks/start") return "topic made";
  return "topic";
}

// --- reading the lists -------------------------------------------------------------------

const readers = {
  async namespaces() {
    const page = await state.api.request("GET", "/namespaces?limit=1000");
    state.namespaces = new Set(page.namespaces.map((n) => n.name));
    const names = new Set(state.namespaces);
    names.add("default");
    names.add(state.api.namespace);
    const select = $("#namespace");
    const current = state.api.namespace;
    select.replaceChildren(...[...names].sort().map((name) => element("option", { value: name }, [name])));
    select.value = current;
  },
  async containers() {
    const items = await readPages("/containers", "containers");
    state.containers = new Map(items.map((c) => [c.id, c]));
    renderContainers();
  },
  async tasks() {
    const items = await readPages("/tasks", "tasks");
    state.tasks = new Map(items.map((t) => [t.id, t]));
    renderAll();
  },
  async images() {
    const items = await readPages("/images", "images");
    renderImages(items);
  },
  async networks() {
    const page = await state.api.request("GET", "/networks");
    renderNetworks(page.networks);
  },
  async exits() {
    // The last exit of each container, from the stored events (a task is deleted when it
    // exits, its status stays with the events).
    const filter = encodeURIComponent(`topic=="/tasks/exit",namespace==${state.api.namespace}`);
    let since = 0;
    for (let pages = 0; pages < 10; pages++) {
      const page = await state.api.request("GET", `/events/history?filter=${filter}&since=${since}&limit=1000`);
      for (const { event } of page.events) if (event.id === event.container_id) state.exits.set(event.container_id, event);
      if (page.events.length < 1000) break;
      since = page.last_id;
    }
  },
};

// A namespace is made by the first write in it; until then its lists are 404s, not read.
async function namespaceExists() {
  if (!state.namespaces.has(state.api.namespace)) await read("namespaces");
  return state.namespaces.has(state.api.namespace);
}

async function readPages(path, key) {
  const items = [];
  if (!(await namespaceExists())) return items;
  let after = "";
  for (let pages = 0; pages < 20; pages++) {
    const page = await state.api.request("GET", `${path}?limit=1000${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    items.push(...page[key]);
    if (!page.next_cursor) break;
    after = page.next_cursor;
  }
  return items;
}

// Each list has one read at a time, so an older answer never overwrites a newer one; asks
// that come during a read make one more read after it.
function entryOf(what) {
  if (!state.refreshes.has(what)) state.refreshes.set(what, { timer: null, running: null, again: false });
  return state.refreshes.get(what);
}

function read(what) {
  const entry = entryOf(what);
  if (entry.running) {
    entry.again = true;
    return entry.running;
  }
  entry.running = (async () => {
    try {
      do {
        entry.again = false;
        await readers[what]();
      } while (entry.again);
    } finally {
      entry.running = null;
    }
  })();
  return entry.running;
}

// Read `what` again soon: the calls of a few milliseconds (a burst of events) make one read.
function refresh(what) {
  const entry = entryOf(what);
  if (entry.timer) return;
  entry.timer = setTimeout(() => {
    entry.timer = null;
    read(what).catch((error) => {
      if (!(error instanceof ApiError && error.status === 401)) notice(`Reading ${what} failed: ${error.message}`, "error");
    });
  }, 30);
}

async function refreshAll() {
  try {
    await Promise.all([read("exits"), read("namespaces")]);
    await Promise.all([read("containers"), read("tasks"), read("images")]);
    if (state.view === "networks") await read("networks");
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) notice(`Reading the daemon failed: ${error.message}`, "error");
  }
}

// --- metrics -------------------------------------------------------------------------------

async function pollMetrics() {
  if (!state.api || !state.tasks.size) return;
  let text;
  try {
    text = await state.api.request("GET", "/metrics", undefined, { accept: "text/plain" });
  } catch {
    return; // the next tick tries again
  }
  const now = Date.now();
  const figures = new Map();
  for (const sample of parseMetrics(text, METRIC_NAMES)) {
    const key = `${sample.labels.namespace}/${sample.labels.container_id}`;
    if (!figures.has(key)) figures.set(key, {});
    figures.get(key)[sample.name] = sample.value;
  }
  for (const [key, figure] of figures) {
    const seconds = figure.container_cpu_usage_seconds_total;
    let cpu = state.cpu.get(key);
    if (seconds !== undefined) {
      // The counter moves when the monitor reads the cgroup: the rate is taken between moves.
      if (!cpu) cpu = { time: now, seconds, rate: 0 };
      else if (seconds !== cpu.seconds) cpu = { time: now, seconds, rate: Math.max(0, (seconds - cpu.seconds) / ((now - cpu.time) / 1000)) };
      else if (now - cpu.time > 3000) cpu = { ...cpu, rate: 0 };
      state.cpu.set(key, cpu);
    }
    const samples = state.samples.get(key) || [];
    samples.push({
      time: now,
      memory: figure.container_memory_usage_bytes,
      limit: figure.container_memory_limit_bytes,
      cpu: cpu ? cpu.rate : 0,
      pids: figure.container_pids_current,
    });
    while (samples.length && now - samples[0].time > CHART_SECONDS * 1000) samples.shift();
    state.samples.set(key, samples);
  }
  for (const key of state.samples.keys()) {
    if (!figures.has(key)) state.cpu.delete(key);
  }
  updateTaskFigures();
}

function latest(id) {
  const samples = state.samples.get(`${state.api.namespace}/${id}`) || [];
  return { samples, last: samples[samples.length - 1] };
}

// --- rendering -------------------------------------------------------------------------------

function renderAll() {
  renderContainers();
  renderTasks();
}

function statusOf(id) {
  const task = state.tasks.get(id);
  const exit = state.exits.get(id);
  if (task && task.status !== "stopped") return { text: task.status, kind: task.status };
  if (state.ooms.has(id) && (!exit || exit.oom_killed || !task)) {
    return { text: exit ? `OOM killed (exit ${exit.exit_status})` : "OOM killed", kind: "oom" };
  }
  if (exit) return { text: `exited (${exit.exit_status})${exit.oom_killed ? ", OOM killed" : ""}`, kind: exit.oom_killed ? "oom" : "stopped" };
  return { text: task ? task.status : "no task", kind: "none" };
}

function renderContainers() {
  const rows = [...state.containers.values()].sort((a, b) => a.id.localeCompare(b.id)).map((container) => {
    const status = statusOf(container.id);
    const task = state.tasks.get(container.id);
    const running = task && (task.status === "running" || task.status === "paused");
    return element("tr", { "data-id": container.id, "data-status": status.kind }, [
      element("td", { class: "id" }, [container.id]),
      element("td", {}, [container.image || container.snapshot_key || "—"]),
      element("td", {}, labels(container.labels)),
      element("td", {}, networkOf(container, task)),
      element("td", {}, [element("span", { class: `status ${status.kind}` }, [status.text])]),
      element("td", { class: "actions" }, actionButtons(container.id, task, running)),
    ]);
  });
  $("#containers tbody").replaceChildren(...rows);
  $("#containers-empty").hidden = rows.length > 0;
}

function actionButtons(id, task, running) {
  const buttons = [];
  // An exited task is deleted by the daemon: Start comes back once it is gone (/tasks/delete).
  if (!task || task.status === "created") buttons.push(button("start", "Start", id));
  if (running) buttons.push(button("stop", "Stop", id), button("kill", "Kill", id));
  if (task && task.status !== "stopped") buttons.push(button("delete-task", "Delete task", id));
  if (task || state.exits.has(id)) buttons.push(button("log", "Log", id)); // a log once it has run
  if (task && task.status === "running") buttons.push(button("terminal", "Terminal", id));
  if (!task) buttons.push(button("remove", "Remove", id, "danger"));
  return buttons;
}

function renderTasks() {
  const rows = [...state.tasks.values()].sort((a, b) => a.id.localeCompare(b.id)).map((task) => {
    const status = statusOf(task.id);
    const running = task.status === "running" || task.status === "paused";
    return element("tr", { "data-id": task.id, "data-status": status.kind }, [
      element("td", { class: "id" }, [task.id]),
      element("td", {}, [element("span", { class: `status ${status.kind}` }, [status.text])]),
      element("td", {}, [task.pid ? String(task.pid) : "—"]),
      element("td", { class: "cpu num" }, ["—"]),
      element("td", { class: "memory num" }, ["—"]),
      element("td", { class: "pids num" }, ["—"]),
      element("td", {}, [element("canvas", { class: "chart", width: "180", height: "36" }, [])]),
      element("td", { class: "actions" }, actionButtons(task.id, task, running)),
    ]);
  });
  $("#tasks tbody").replaceChildren(...rows);
  $("#tasks-empty").hidden = rows.length > 0;
  updateTaskFigures();
}

function updateTaskFigures() {
  for (const row of document.querySelectorAll("#tasks tbody tr")) {
    const { samples, last } = latest(row.dataset.id);
    if (!last) continue;
    row.dataset.memory = String(last.memory ?? "");
    row.dataset.samples = String(samples.length);
    row.querySelector(".cpu").textContent = `${(last.cpu * 100).toFixed(1)} %`;
    row.querySelector(".memory").textContent = last.memory === undefined ? "—" :
      bytes(last.memory) + (last.limit ? ` / ${bytes(last.limit)}` : "");
    row.querySelector(".pids").textContent = last.pids === undefined ? "—" : String(last.pids);
    if (state.view === "tasks") drawChart(row.querySelector("canvas"), samples, CHART_SECONDS);
  }
}

function renderImages(images) {
  const rows = images.sort((a, b) => a.name.localeCompare(b.name)).map((image) => element("tr", { "data-name": image.name }, [
    element("td", { class: "id" }, [image.name]),
    element("td", {}, [image.platforms.join(", ") || "—"]),
    element("td", { class: "num" }, [bytes(image.size)]),
    element("td", { class: "digest" }, [image.target.digest.slice(0, 19)]),
    element("td", {}, [time(image.created_at)]),
    element("td", { class: "actions" }, [button("delete-image", "Delete", image.name, "danger")]),
  ]));
  $("#images tbody").replaceChildren(...rows);
  $("#images-empty").hidden = rows.length > 0;
}

function renderNetworks(networks) {
  $("#networks tbody").replaceChildren(...networks.map((network) => element("tr", { "data-name": network.name }, [
    element("td", { class: "id" }, [network.name]),
    element("td", {}, [network.driver]),
    element("td", {}, [network.bridge]),
    element("td", {}, [network.subnet]),
    element("td", {}, [network.gateway]),
    element("td", {}, labels(network.labels)),
    element("td", {}, [time(network.created_at)]),
  ])));
}

function labels(map) {
  const entries = Object.entries(map || {});
  if (!entries.length) return ["—"];
  return entries.map(([key, value]) => element("span", { class: "label" }, [`${key}=${value}`]));
}

function networkOf(container, task) {
  if (!container.network) return ["—"];
  const parts = [element("span", { class: "network" }, [container.network.name + (task?.network?.ip ? ` ${task.network.ip}` : "")])];
  for (const port of container.network.ports || []) {
    parts.push(element("span", { class: "port" }, [
      `${port.host_ip ? port.host_ip + ":" : ""}${port.host_port}→${port.container_port}/${port.protocol}`,
    ]));
  }
  return parts;
}

// --- actions ---------------------------------------------------------------------------------

async function onAction(event) {
  const target = event.target.closest("button[data-action]");
  if (!target) return;
  const { action, id } = target.dataset;
  const api = state.api;
  const task = `/tasks/${encodeURIComponent(id)}`;
  target.disabled = true;
  try {
    if (action === "start") {
      if (!state.tasks.has(id)) await api.request("POST", "/tasks", { container_id: id });
      await api.request("POST", `${task}/start`);
    } else if (action === "stop") {
      await api.request("POST", `${task}/kill`, { signal: "SIGTERM" });
      const waited = new AbortController();
      const timer = setTimeout(() => waited.abort(), STOP_SECONDS * 1000);
      try {
        await api.request("POST", `${task}/wait`, undefined, { signal: waited.signal });
      } catch (error) {
        if (!waited.signal.aborted) throw error;
        await api.request("POST", `${task}/kill`, { signal: "SIGKILL" });
      } finally {
        clearTimeout(timer);
      }
    } else if (action === "kill") {
      await api.request("POST", `${task}/kill`, { signal: "SIGKILL" });
    } else if (action === "delete-task") {
      await api.request("DELETE", task);
    } else if (action === "remove") {
      await api.request("DELETE", `/containers/${encodeURIComponent(id)}`);
    } else if (action === "log" || action === "terminal") {
      await openPanel(id, action);
    }
  } catch (error) {
    notice(`${action} ${id}: ${error.message}`, "error");
  } finally {
    target.disabled = false;
    refresh("tasks");
  }
}

async function onImageAction(event) {
  const target = event.target.closest("button[data-action='delete-image']");
  if (!target) return;
  target.disabled = true;
  try {
    await state.api.request("DELETE", `/images/${pathOf(target.dataset.id)}`);
  } catch (error) {
    notice(`delete ${target.dataset.id}: ${error.message}`, "error");
  } finally {
    target.disabled = false;
    refresh("images");
  }
}

async function onPull(event) {
  event.preventDefault();
  const reference = $("#pull-reference").value.trim();
  const submit = $("#pull-form button");
  const layers = new Map();
  $("#pull-progress").hidden = false;
  $("#pull-layers").replaceChildren();
  const say = (text, kind = "") => {
    $("#pull-status").textContent = text;
    $("#pull-status").className = kind;
  };
  say(`pulling ${reference} …`);
  submit.disabled = true;
  try {
    const body = { reference, plain_http: $("#pull-plain-http").checked };
    for await (const frame of state.api.events("POST", "/images/pull", body)) {
      const data = JSON.parse(frame.data);
      if (frame.event === "resolved") {
        say(`resolved ${data.reference} → ${data.target.digest.slice(0, 19)}`);
      } else if (frame.event === "progress") {
        let layer = layers.get(data.digest);
        if (!layer) {
          const bar = element("progress", { max: String(data.total || 1) }, []);
          const label = element("span", {}, []);
          layer = { bar, label };
          layers.set(data.digest, layer);
          $("#pull-layers").append(element("li", { "data-digest": data.digest }, [
            element("code", {}, [data.digest.slice(7, 19)]), bar, label,
          ]));
        }
        layer.bar.max = data.total || 1;
        layer.bar.value = data.bytes;
        layer.label.textContent = `${bytes(data.bytes)} / ${bytes(data.total)}`;
      } else if (frame.event === "unpacked") {
        say(`unpacked ${data.layer.slice(0, 19)}${data.reused ? " (already there)" : ""}`);
      } else if (frame.event === "done") {
        say(`pulled ${data.name} (${bytes(data.size)})`, "ok");
        refresh("images");
      } else if (frame.event === "error") {
        say(`pull failed: ${data.detail} (${data.status})`, "error");
      }
    }
  } catch (error) {
    say(`pull failed: ${error.message}`, "error");
  } finally {
    submit.disabled = false;
  }
}

// --- the log and terminal panel --------------------------------------------------------------

async function openPanel(id, kind) {
  closePanel();
  const panel = { id, kind, abort: new AbortController(), terminal: null };
  state.panel = panel;
  $("#panel").hidden = false;
  $("#panel").dataset.id = id;
  $("#panel").dataset.kind = kind;
  $("#panel-title").textContent = id;
  for (const button of document.querySelectorAll("#panel [data-panel]")) {
    button.classList.toggle("active", button.dataset.panel === kind);
  }
  $("#log").hidden = kind !== "log";
  $("#terminal").hidden = kind !== "terminal";
  const setState = (text) => {
    if (state.panel === panel) $("#panel-state").textContent = text;
  };
  if (kind === "log") {
    $("#log").replaceChildren();
    setState("following");
    followLog(id, panel, setState);
  } else {
    $("#terminal").replaceChildren();
    setState("starting a shell");
    try {
      const { openTerminal } = await import("./term.js");
      const opened = await openTerminal(state.api, $("#terminal"), id, setState);
      if (state.panel === panel) panel.terminal = opened;
      else opened.close();
    } catch (error) {
      setState(`failed: ${error.message}`);
    }
  }
}

async function followLog(id, panel, setState) {
  const log = $("#log");
  try {
    const path = `/tasks/${encodeURIComponent(id)}/logs?follow=true&tail=500`;
    for await (const frame of state.api.events("GET", path, undefined, { signal: panel.abort.signal })) {
      const line = JSON.parse(frame.data);
      const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.append(element("span", { class: line.stream }, [line.line + (line.partial ? "" : "\n")]));
      while (log.childNodes.length > 5000) log.firstChild.remove();
      if (atBottom) log.scrollTop = log.scrollHeight;
    }
    setState("ended: the task has exited");
  } catch (error) {
    if (!panel.abort.signal.aborted) setState(`stopped: ${error.message}`);
  }
}

function closePanel() {
  const panel = state.panel;
  state.panel = null;
  if (panel) {
    panel.abort.abort();
    if (panel.terminal) panel.terminal.close();
  }
  const section = $("#panel");
  if (section) section.hidden = true;
}

// --- small helpers ---------------------------------------------------------------------------

function element(tag, attributes, children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function button(action, text, id, kind = "") {
  return element("button", { type: "button", "data-action": action, "data-id": id, class: kind }, [text]);
}

// A line at the top of the page; `key` replaces an earlier one of the same key.
function notice(text, kind, key = "") {
  const list = $("#notices");
  if (key) list.querySelector(`[data-key="${CSS.escape(key)}"]`)?.remove();
  const item = element("div", { class: `notice ${kind}`, "data-key": key, role: kind === "error" ? "alert" : "status" }, [
    element("span", {}, [`${time(new Date().toISOString())} ${text}`]),
    element("button", { type: "button", class: "dismiss", "aria-label": "dismiss" }, ["×"]),
  ]);
  item.querySelector(".dismiss").onclick = () => item.remove();
  list.prepend(item);
  while (list.children.length > 5) list.lastElementChild.remove();
}

function bytes(count) {
  if (count === undefined || count === null || Number.isNaN(count)) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = count;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

function time(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleTimeString([], { hour12: false });
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

boot();
