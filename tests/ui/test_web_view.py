"""The web view (`/ui`, issue 19) in a real browser (headless Chromium) against a real daemon
(runc, conmon, a registry): the page's files and their headers, the token asked for once and
a wrong one refused, no console errors, containers shown within a second of their create
event, start/stop/kill/delete, a task's memory rising on its chart, a log followed live, a
terminal running `echo`, a pull with progress, an OOM kill as it happens, other origins
refused, and `cargohold ui` serving all of it over the daemon's unix socket.

One daemon and one browser for the module; each test opens its own page (a logged-in page
costs some 0.3 s) and screenshots of the main views go to conftest.SCREENSHOTS."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Response, expect
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from app.client.entry import main
from tests.conftest import stop_process, wait_for_sync
from tests.runtime.daemon import CARGOHOLD
from tests.ui.conftest import PULLED_REPOSITORY, TOKEN, Daemon

pytestmark = [pytest.mark.runtime, pytest.mark.registry]

# Quits on SIGTERM at once (busybox sh runs the trap between two short sleeps).
SLEEPER = ["sh", "-c", 'trap "exit 0" TERM; while true; do sleep 0.1; done']
MIB = 1024 * 1024


class Watched:
    """A page and what went wrong on it: console errors, uncaught exceptions, failed requests."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"console {message.type}: {message.text}")

    def _failed(self, request: Request) -> None:
        # Streams the page closes itself (a log follow, the event stream) end as aborted.
        if request.failure != "net::ERR_ABORTED":
            self.problems.append(f"failed: {request.method} {request.url} {request.failure}")

    def _response(self, response: Response) -> None:
        if response.status >= 400:
            self.problems.append(f"{response.status}: {response.request.method} {response.url}")


@pytest.fixture
def page(browser: Browser, daemon: Daemon) -> Iterator[Page]:
    """A page logged in with the right token (through the form, as a person does)."""
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    opened = context.new_page()
    watched = Watched(opened)
    try:
        opened.goto(f"{daemon.url}/ui/")
        opened.fill("#token", TOKEN)
        opened.click("#login-form button[type=submit]")
        expect(opened.locator("#stream-state")).to_have_text("events: live")
        yield opened
        assert watched.problems == []
    finally:
        context.close()


def shoot(page: Page, screenshots: Path, name: str) -> None:
    page.screenshot(path=screenshots / f"{name}.png", full_page=True)


def show(page: Page, view: str) -> None:
    page.click(f"#tabs button[data-view={view}]")
    expect(page.locator(f"#view-{view}")).to_be_visible()


def row(page: Page, table: str, key: str) -> Any:
    attribute = "data-name" if table in ("images", "networks") else "data-id"
    return page.locator(f"#{table} tbody tr[{attribute}='{key}']")


# --- the files, the token, the origin -----------------------------------------------------------


def test_the_page_s_files_need_no_token_and_carry_a_strict_policy(daemon: Daemon) -> None:
    with httpx.Client(base_url=daemon.url, trust_env=False) as anonymous:
        redirect = anonymous.get("/ui")
        assert redirect.status_code == 308 and redirect.headers["location"] == "/ui/"
        index = anonymous.get("/ui/")
        assert index.status_code == 200 and index.headers["content-type"] == "text/html; charset=utf-8"
        assert '<script type="module" src="app.js">' in index.text
        policy = dict(part.strip().split(" ", 1) for part in index.headers["content-security-policy"].split(";"))
        assert policy["default-src"] == "'none'" and policy["script-src"] == "'self'"
        assert policy["frame-ancestors"] == "'none'"
        # The only inline style allowed is the empty one (csp.js leaves xterm's <style> empty).
        assert policy["style-src"] == "'self' 'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
        assert "unsafe" not in index.headers["content-security-policy"]
        assert policy["connect-src"] == f"'self' ws://127.0.0.1:{daemon.tcp_port} wss://127.0.0.1:{daemon.tcp_port}"
        assert index.headers["x-content-type-options"] == "nosniff"
        assert index.headers["cache-control"] == "no-cache"
        for path, media_type in (("/ui/app.js", "text/javascript"), ("/ui/vendor/xterm.mjs", "text/javascript"),
                                 ("/ui/vendor/xterm.css", "text/css"), ("/ui/vendor/LICENSE.xterm", None)):
            got = anonymous.get(path)
            assert got.status_code == 200, path
            if media_type:
                assert got.headers["content-type"] == f"{media_type}; charset=utf-8", path
            again = anonymous.get(path, headers={"If-None-Match": got.headers["etag"]})
            assert again.status_code == 304 and again.content == b"", path
        assert anonymous.get("/ui/no-such-file.js").status_code == 404
        # The API stays behind the token; /ui/ is no way around it, even with dot segments.
        assert anonymous.get("/version").status_code == 401
        raw = _raw_get(daemon.tcp_port, "/ui/../version")
        assert raw.startswith(b"HTTP/1.1 404"), raw[:200]
    assert not any(path.startswith("/ui") for path in daemon.api.get("/openapi.json").json()["paths"])


def _raw_get(port: int, target: str) -> bytes:
    """GET `target` exactly as written (httpx and browsers remove dot segments)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_page_s_stream_parser_takes_frames_apart_however_the_bytes_arrive(
        browser: Browser, daemon: Daemon) -> None:
    """The page reads SSE with fetch() (EventSource cannot send the token): its parser, given
    CRLF, CR and LF line ends, a CRLF split between two chunks, comments and multi-line data."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{daemon.url}/ui/")
        chunks = [": ping\r\n\r\nid: 7\r", "\nevent: /tasks/exit\r\ndata: {\"a\":\r\ndata: 1}\r\n\r",
                  "\nid: 8\ndata: x\n\ndata:y\r\rdata: never ended"]
        frames = page.evaluate(
            """async (chunks) => {
                const { sseFrames } = await import("/ui/api.js");
                const encoder = new TextEncoder();
                const body = new ReadableStream({ start(controller) {
                    for (const chunk of chunks) controller.enqueue(encoder.encode(chunk));
                    controller.close(); } });
                const frames = [];
                for await (const frame of sseFrames(body)) frames.push(frame);
                return frames; }""", chunks)
        assert frames == [{"event": "/tasks/exit", "data": '{"a":\n1}', "id": "7"},
                          {"event": "message", "data": "x", "id": "8"},
                          {"event": "message", "data": "y", "id": None}]
        samples = page.evaluate(
            """async (text) => {
                const { parseMetrics } = await import("/ui/api.js");
                return parseMetrics(text, new Set(["container_memory_usage_bytes"])); }""",
            '# HELP container_memory_usage_bytes Memory in use\n'
            'container_memory_usage_bytes{namespace="default",container_id="a\\"b"} 1.5e+06\n'
            'container_pids_current{namespace="default",container_id="a"} 3.0\n')
        assert samples == [{"name": "container_memory_usage_bytes", "value": 1500000,
                            "labels": {"namespace": "default", "container_id": 'a"b'}}]
    finally:
        context.close()


def test_a_wrong_token_is_refused_and_the_page_says_so(browser: Browser, daemon: Daemon, screenshots: Path) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    try:
        page = context.new_page()
        page.goto(f"{daemon.url}/ui/")
        expect(page.locator("#login")).to_be_visible()
        expect(page.locator("#login .note")).to_contain_text("session storage only")
        page.fill("#token", "not-the-token-not-the-token")
        with page.expect_response(f"{daemon.url}/version") as answered:
            page.click("#login-form button[type=submit]")
        assert answered.value.status == 401
        expect(page.locator("#login-error")).to_contain_text("wrong token")
        expect(page.locator("#login-error")).to_contain_text("401")
        expect(page.locator("#main")).to_be_hidden()
        assert page.evaluate("sessionStorage.length") == 0
        shoot(page, screenshots, "login-refused")
        # Then the right one: kept for the tab only, and a reload does not ask again.
        page.fill("#token", TOKEN)
        page.click("#login-form button[type=submit]")
        expect(page.locator("#main")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('cargohold.token')") == TOKEN
        assert page.evaluate("localStorage.length") == 0
        page.reload()
        expect(page.locator("#stream-state")).to_have_text("events: live")
        expect(page.locator("#login")).to_be_hidden()
    finally:
        context.close()


def test_requests_from_other_origins_are_refused(browser: Browser, daemon: Daemon) -> None:
    foreign = {"Origin": "http://evil.example"}
    refused = daemon.api.get("/version", headers=foreign)
    assert refused.status_code == 403, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert "origin 'http://evil.example' is refused" in refused.json()["detail"]
    assert daemon.api.post("/containers", json={"id": "cross"}, headers=foreign).status_code == 403
    assert daemon.api.get("/containers/cross").status_code == 404  # nothing was made
    assert daemon.api.get("/version", headers={"Origin": daemon.url}).status_code == 200
    # A page elsewhere (the registry's origin) cannot call the daemon with the token: the
    # browser's preflight is refused, and so the request never goes.
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{daemon.registry.url}/v2/")
        outcome = page.evaluate(
            """async ([url, token]) => {
                try { const r = await fetch(url, {headers: {Authorization: `Bearer ${token}`}}); return r.status; }
                catch (error) { return String(error); } }""",
            [f"{daemon.url}/version", TOKEN])
        assert "Failed to fetch" in str(outcome), outcome
    finally:
        context.close()


# --- what the page shows ------------------------------------------------------------------------


def test_the_page_loads_with_no_console_errors_and_shows_every_view(
        page: Page, daemon: Daemon, screenshots: Path) -> None:
    daemon.run("shown", SLEEPER, labels={"env": "prod", "team": "web"})
    expect(row(page, "containers", "shown")).to_contain_text("running")
    show(page, "networks")
    expect(row(page, "networks", "cargohold")).to_contain_text("10.213.0.0/16")
    shoot(page, screenshots, "networks")
    show(page, "images")
    expect(row(page, "images", daemon.image)).to_contain_text("linux/amd64")
    show(page, "events")
    expect(page.locator("#events tbody tr[data-topic='/tasks/start']").first).to_be_visible()
    # The `page` fixture asserts no console error, uncaught exception or failed request.


def test_a_created_container_shows_within_a_second_of_its_create_event(page: Page, daemon: Daemon) -> None:
    with httpx.Client(base_url=daemon.url, headers={"Authorization": f"Bearer {TOKEN}"}, trust_env=False) as api:
        with api.stream("GET", "/events", params={"filter": 'topic=="/containers/create"'}) as events:
            started = time.monotonic()
            daemon.container("fresh", SLEEPER, labels={"tier": "front"},
                             network={"name": "cargohold", "ports": [{"host_port": 18431, "container_port": 80}]})
            lines = events.iter_lines()
            data = next(line for line in lines if line.startswith("data:"))
            announced = time.monotonic()
    assert json.loads(data.removeprefix("data:"))["event"]["id"] == "fresh"
    fresh = row(page, "containers", "fresh")
    expect(fresh).to_be_visible(timeout=1000)
    shown = time.monotonic()
    assert shown - announced < 1.0, f"shown {shown - announced:.2f} s after its create event"
    assert shown - started < 2.0
    expect(fresh).to_contain_text(daemon.image)
    expect(fresh).to_contain_text("tier=front")
    expect(fresh).to_contain_text("18431→80/tcp")
    expect(fresh).to_contain_text("no task")


def test_start_stop_kill_and_delete_a_task_from_the_page(page: Page, daemon: Daemon, screenshots: Path) -> None:
    daemon.container("acts", SLEEPER)
    acts = row(page, "containers", "acts")

    acts.locator("button[data-action=start]").click()
    expect(acts).to_have_attribute("data-status", "running")
    assert daemon.status("acts") == "running"
    shoot(page, screenshots, "containers")

    acts.locator("button[data-action=stop]").click()  # SIGTERM: its trap exits 0
    expect(acts.locator(".status")).to_have_text("exited (0)")
    assert daemon.status("acts") is None  # exit means delete

    acts.locator("button[data-action=start]").click()
    expect(acts).to_have_attribute("data-status", "running")
    acts.locator("button[data-action=kill]").click()
    expect(acts.locator(".status")).to_have_text("exited (137)")
    assert daemon.api.post("/tasks/acts/wait").json()["exit_status"] == 137

    acts.locator("button[data-action=start]").click()
    expect(acts).to_have_attribute("data-status", "running")
    acts.locator("button[data-action=delete-task]").click()
    expect(acts.locator(".status")).to_have_text("exited (137)")
    assert daemon.status("acts") is None

    acts.locator("button[data-action=remove]").click()
    expect(acts).to_have_count(0)
    assert daemon.api.get("/containers/acts").status_code == 404


def test_a_task_s_memory_rises_on_its_chart(page: Page, daemon: Daemon, screenshots: Path) -> None:
    # 1 MiB more in /dev/shm (tmpfs: charged to the task's memory) every 80 ms, up to 48 MiB.
    grow = "i=0; while [ $i -lt 48 ]; do dd if=/dev/zero of=/dev/shm/f$i bs=1M count=1 2>/dev/null; " \
           "i=$((i+1)); sleep 0.08; done; exec sleep 600"
    show(page, "tasks")
    daemon.run("grow", ["sh", "-c", grow])
    grows = row(page, "tasks", "grow")
    expect(grows).to_have_attribute("data-memory", re.compile(r"^\d+$"))
    first = int(grows.get_attribute("data-memory") or 0)
    wait_for_sync(lambda: int(grows.get_attribute("data-memory") or 0) >= first + 16 * MIB,
                  "the memory shown rises by 16 MiB", within=10)
    assert int(grows.get_attribute("data-samples") or 0) >= 3
    expect(grows.locator(".memory")).to_contain_text("MiB")
    expect(grows.locator(".pids")).not_to_have_text("—")
    shoot(page, screenshots, "tasks")


def test_a_log_follows_live_and_a_terminal_runs_echo(page: Page, daemon: Daemon, screenshots: Path) -> None:
    daemon.run("ticker", ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"])
    ticker = row(page, "containers", "ticker")
    ticker.locator("button[data-action=log]").click()
    expect(page.locator("#panel-state")).to_have_text("following")
    expect(page.locator("#log")).to_contain_text("tick 1\n")
    seen = int((page.locator("#log span").last.text_content() or "").split()[-1])
    expect(page.locator("#log")).to_contain_text(f"tick {seen + 3}\n")  # arriving as they are written
    shoot(page, screenshots, "log")

    expect(ticker.locator("button[data-action=terminal]")).to_be_visible()
    ticker.locator("button[data-action=terminal]").click()
    expect(page.locator("#panel-state")).to_have_text("connected")
    page.locator("#terminal .xterm-helper-textarea").focus()
    page.keyboard.type("echo ui-$((6*7))\n")
    expect(page.locator("#terminal .xterm-rows")).to_contain_text("ui-42")
    shoot(page, screenshots, "terminal")
    processes = daemon.api.get("/tasks/ticker").json()["processes"]
    assert len(processes) == 1 and processes[0]["status"] == "running"
    page.click("#panel-close")  # the shell is killed, not left behind
    wait_for_sync(lambda: daemon.api.get("/tasks/ticker").json()["processes"] == [], "the shell is gone", within=10)


def test_pull_with_progress_and_delete_an_image_from_the_page(page: Page, daemon: Daemon, screenshots: Path) -> None:
    reference = f"{daemon.registry.host}/{PULLED_REPOSITORY}:latest"
    show(page, "images")
    page.fill("#pull-reference", reference)
    page.check("#pull-plain-http")
    page.click("#pull-form button[type=submit]")
    expect(page.locator("#pull-status")).to_contain_text(f"pulled {reference}", timeout=20000)
    layers = page.locator("#pull-layers li")
    assert layers.count() >= 2  # the config and the layer (the manifest is not counted in bytes)
    for index in range(layers.count()):
        bar = layers.nth(index).locator("progress")
        assert bar.evaluate("bar => bar.value === bar.max && bar.max > 0")
    pulled = row(page, "images", reference)
    expect(pulled).to_contain_text("linux/amd64")
    expect(pulled).to_contain_text("MiB")
    shoot(page, screenshots, "images")
    assert daemon.api.get(f"/images/{reference}").status_code == 200

    pulled.locator("button[data-action=delete-image]").click()
    expect(pulled).to_have_count(0)
    assert daemon.api.get(f"/images/{reference}").status_code == 404


def test_an_oom_kill_shows_as_it_happens(page: Page, daemon: Daemon, screenshots: Path) -> None:
    # A shell doubling a variable under a 32 MiB limit (as tests/runtime/test_monitor.py).
    daemon.run("hungry", ["sh", "-c", "x=a; while true; do x=$x$x; done"], memory=32 * MIB)
    expect(page.locator("#notices .notice.oom")).to_contain_text("OOM kill in hungry (limit 32.0 MiB")
    hungry = row(page, "containers", "hungry")
    expect(hungry).to_have_attribute("data-status", "oom")
    expect(hungry.locator(".status")).to_have_text("OOM killed (exit 137)")
    show(page, "events")
    expect(page.locator("#events tbody tr[data-topic='/tasks/oom']")).to_contain_text('"container_id":"hungry"')
    shoot(page, screenshots, "events")
    assert daemon.api.post("/tasks/hungry/wait").json()["oom_killed"] is True


# --- cargohold ui -----------------------------------------------------------------------------------


def test_cargohold_ui_has_help_and_says_when_no_daemon_answers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ui", "--help"]) == 0
    assert "Example: cargohold ui" in capsys.readouterr().out
    assert main(["--host", f"unix://{tmp_path}/nobody.sock", "ui", "--no-browser"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "cannot connect to the Cargohold daemon" in err and "nobody.sock" in err


def test_cargohold_ui_serves_the_page_and_the_api_over_the_unix_socket(
        browser: Browser, daemon: Daemon, tmp_path: Path, screenshots: Path) -> None:
    # The browser it opens: $BROWSER, here a script that writes down what it was given.
    opened = tmp_path / "opened"
    fake_browser = tmp_path / "browser"
    fake_browser.write_text(f"#!/bin/sh\necho \"$@\" > {opened}\n")
    fake_browser.chmod(0o700)
    proxy = subprocess.Popen(
        [str(CARGOHOLD), "--host", f"unix://{daemon.socket}", "ui"], stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "BROWSER": str(fake_browser), "CARGOHOLD_TOKEN": ""}, start_new_session=True)
    try:
        assert proxy.stdout is not None
        assert proxy.stdout.readline().startswith(f"The web view of unix://{daemon.socket}")
        url = proxy.stdout.readline().strip()
        parts = urlsplit(url)
        assert parts.hostname == "127.0.0.1" and parts.path == "/ui/" and parts.fragment.startswith("token=")
        token = parts.fragment.removeprefix("token=")
        assert len(token) >= 32 and token != TOKEN
        base = f"http://127.0.0.1:{parts.port}"

        # The browser was given a private file that leads to the page, not the token itself.
        wait_for_sync(opened.exists, "the browser is started", within=10)
        given = opened.read_text().strip()
        assert token not in given
        redirect = Path(urlsplit(given).path)
        assert stat.S_IMODE(redirect.stat().st_mode) == 0o600
        assert stat.S_IMODE(redirect.parent.stat().st_mode) == 0o700
        assert f'url={url}"' in redirect.read_text()

        # The page's files are no way around the token (httpx would remove the dot segments).
        for target in ("/ui/../version", "/ui/%2e%2e/version", "/ui/./../tasks"):
            assert _raw_get(parts.port or 0, target).startswith(b"HTTP/1.1 400"), target
        with httpx.Client(base_url=base, trust_env=False) as http:
            assert http.get("/ui/").status_code == 200  # the page needs no token
            assert http.get("/version").status_code == 401
            assert http.get("/version", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401
            assert http.get("/version", headers={"Authorization": f"Bearer {token}",
                                                 "Origin": "http://evil.example"}).status_code == 403
            assert http.get("/version", headers={"Authorization": f"Bearer {token}"}).json()["snapshotter"]
            with http.stream("GET", "/events", params={"since": "0"},
                             headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                assert next(line for line in stream.iter_lines() if line.startswith("data:"))

        # The page, opened as the browser would (through the file): logged in, live, with a
        # terminal through the proxy's WebSocket.
        daemon.run("proxied", SLEEPER)
        context = browser.new_context(viewport={"width": 1280, "height": 820})
        try:
            page = context.new_page()
            watched = Watched(page)
            page.goto(given)
            expect(page.locator("#stream-state")).to_have_text("events: live")
            assert page.url == f"{base}/ui/#containers"  # the token left the address bar
            proxied = row(page, "containers", "proxied")
            expect(proxied).to_have_attribute("data-status", "running")
            proxied.locator("button[data-action=terminal]").click()
            expect(page.locator("#panel-state")).to_have_text("connected")
            page.locator("#terminal .xterm-helper-textarea").focus()
            page.keyboard.type("echo via-$((40+2))\n")
            expect(page.locator("#terminal .xterm-rows")).to_contain_text("via-42")
            shoot(page, screenshots, "cargohold-ui")
            page.click("#panel-close")
            assert watched.problems == []
        finally:
            context.close()
        os.kill(proxy.pid, signal.SIGTERM)
        assert proxy.wait(10) == 0
        assert not redirect.parent.exists()  # its file went with it
    finally:
        stop_process(proxy)
        if proxy.stdout:
            proxy.stdout.close()
        if proxy.stderr:
            proxy.stderr.close()


def test_cargohold_ui_in_front_of_a_tcp_daemon_adds_the_daemon_s_token(daemon: Daemon) -> None:
    proxy = subprocess.Popen(
        [str(CARGOHOLD), "--host", f"tcp://127.0.0.1:{daemon.tcp_port}", "ui", "--no-browser"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "CARGOHOLD_TOKEN": TOKEN}, start_new_session=True)
    try:
        assert proxy.stdout is not None and proxy.stderr is not None
        first = proxy.stdout.readline()
        assert first.startswith(f"The web view of tcp://127.0.0.1:{daemon.tcp_port}"), (first, proxy.stderr.read())
        parts = urlsplit(proxy.stdout.readline().strip())
        token = parts.fragment.removeprefix("token=")
        base = f"http://127.0.0.1:{parts.port}"
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, trust_env=False) as http:
            assert http.get("/version").status_code == 200  # the daemon's token added on the way
            assert http.get("/containers/nobody").json()["detail"].startswith('container "nobody" not found')
        # A WebSocket refused by the daemon is refused alike, with the daemon's answer.
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{parts.port}/tasks/nobody/attach", subprotocols=[Subprotocol("v5.channel.k8s.io")],
                    additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10)
        assert refused.value.response.status_code == 404
        assert b"nobody" in (refused.value.response.body or b"")
        # A process that ends: the daemon's status message and close code come through as sent.
        daemon.run("relayed", SLEEPER)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, trust_env=False) as http:
            added = http.post("/tasks/relayed/processes",
                              json={"exec_id": "three", "process": {"args": ["sh", "-c", "exit 3"]}})
            assert added.status_code == 201, added.text
            with connect(f"ws://127.0.0.1:{parts.port}/tasks/relayed/processes/three/attach",
                         subprotocols=[Subprotocol("v5.channel.k8s.io")],
                         additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10) as attached:
                assert http.post("/tasks/relayed/processes/three/start").status_code == 200
                statuses = [json.loads(message[1:]) for message in attached
                            if isinstance(message, bytes) and message[:1] == b"\x03"]
            assert attached.close_code == 1000, (attached.close_code, attached.close_reason)
            assert [status["status"] for status in statuses] == ["Failure"], statuses
            assert "3" in json.dumps(statuses[0])
        os.kill(proxy.pid, signal.SIGTERM)
        assert proxy.wait(10) == 0
    finally:
        stop_process(proxy)
        for stream in (proxy.stdout, proxy.stderr):
            if stream:
                stream.close()
