"""The `cargohold` client run as a user runs it: a subprocess against a real daemon (runc,
conmon, overlayfs) and a real registry. Exit statuses, what is printed, and what the
daemon holds afterwards."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.client.api import server_sent_events
from app.client.entry import main
from tests.client.conftest import TOKEN, Daemon
from tests.conftest import BASE_URL
from tests.runtime.daemon import CARGOHOLD
from tests.runtime.test_networks import require_networking

pytestmark = [pytest.mark.runtime, pytest.mark.registry]


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return done.stdout


@pytest.fixture(scope="module")
def pulled(daemon: Daemon) -> Daemon:
    """The daemon with busybox pulled (through the client, its output not a terminal)."""
    out = ok(daemon.cli("pull", "--plain-http", daemon.image))
    lines = out.splitlines()
    assert lines[0].startswith(f"resolved {daemon.image} -> sha256:"), out
    assert any("downloaded" in line for line in lines), out
    assert lines[-1].startswith(f"pulled {daemon.image} (sha256:"), out
    assert "\x1b" not in out  # plain lines: no progress bar, no colour
    return daemon


def test_no_daemon_says_so_and_where_it_looked(tmp_path: Path) -> None:
    socket = tmp_path / "nobody.sock"
    done = subprocess.run([str(CARGOHOLD), "--host", f"unix://{socket}", "ps"], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "cannot connect to the Cargohold daemon" in lines[0] and str(socket) in lines[0], done.stderr
    assert "is it running?" in lines[0]


@pytest.mark.parametrize("command", [
    "run", "exec", "attach", "ps", "inspect", "logs", "stop", "kill", "rm", "stats", "pull", "push", "images", "rmi",
    "import", "export", "events", "network ls", "network create", "network rm"])
def test_every_command_has_help_with_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    # In-process (the same entry point): twenty process starts would cost seconds and show nothing more.
    assert main([*command.split(), "--help"]) == 0
    assert "Example: cargohold " in capsys.readouterr().out


def test_events_stream_what_happened(pulled: Daemon) -> None:
    ok(pulled.cli("run", "--rm", "--name", "evented", pulled.image, "true"))
    watch = subprocess.Popen([str(CARGOHOLD), "events", "--since", "0", "-o", "json", "--filter",
                              'topic=="/tasks/exit",event.container_id=="evented"'],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "CARGOHOLD_HOST": pulled.host})
    try:
        assert watch.stdout is not None
        event = json.loads(watch.stdout.readline())
    finally:
        watch.kill()
        watch.communicate(timeout=10)
    assert event["topic"] == "/tasks/exit" and event["event"]["container_id"] == "evented"
    assert event["event"]["exit_status"] == 0


def test_run_rm_prints_and_exits_with_the_status(pulled: Daemon) -> None:
    done = pulled.cli("run", "--rm", "--name", "hello", pulled.image, "echo", "hi")
    assert ok(done) == "hi\n"
    failed = pulled.cli("run", "--rm", pulled.image, "sh", "-c", "echo oops >&2; exit 3")
    assert failed.returncode == 3, (failed.stdout, failed.stderr)
    assert failed.stderr == "oops\n" and failed.stdout == ""
    # --rm: nothing is left.
    assert json.loads(ok(pulled.cli("ps", "-a", "--output", "json"))) == []


def test_run_interactive_reads_stdin(pulled: Daemon) -> None:
    done = pulled.cli("run", "--rm", "-i", pulled.image, "sh", "-c", "tr a-z A-Z", input="shout\n")
    assert ok(done) == "SHOUT\n"


def test_detached_container_lifecycle(pulled: Daemon) -> None:
    name = "web"
    assert ok(pulled.cli("run", "-d", "--name", name, "--memory", str(64 * 1024 * 1024), pulled.image, "sh", "-c",
                         "echo started; exec sleep 1000")).strip() == name
    try:
        listed = json.loads(ok(pulled.cli("ps", "--output", "json")))
        assert [(c["id"], c["task"]["status"]) for c in listed] == [(name, "running")]
        table = ok(pulled.cli("ps")).splitlines()
        assert table[0].split()[:3] == ["CONTAINER", "ID", "IMAGE"]
        assert table[1].split()[:3] == [name, pulled.image, '"sh'], table
        assert "Up " in table[1]
        assert ok(pulled.cli("exec", name, "sh", "-c", "echo in-$((40+2))")) == "in-42\n"
        assert pulled.cli("exec", name, "sh", "-c", "exit 7").returncode == 7
        assert ok(pulled.cli("logs", name)) == "started\n"
        # --memory: the task's cgroup limit, as the monitor reads it.
        assert limited_stats(pulled, name)[0]["memory_limit_bytes"] == 64 * 1024 * 1024
        inspected = json.loads(ok(pulled.cli("inspect", name)))
        assert inspected[0]["id"] == name and inspected[0]["task"]["status"] == "running"
        # A running container is not deleted without -f: the daemon's detail, one line.
        refused = pulled.cli("rm", name)
        assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1, refused.stderr
        assert "(409)" in refused.stderr
        started = time.monotonic()
        # sleep, as pid 1, ignores SIGTERM: SIGKILL comes after -t.
        assert ok(pulled.cli("stop", "-t", "1", name)).strip() == name
        assert 1 <= time.monotonic() - started < 10
        assert json.loads(ok(pulled.cli("ps", "--output", "json"))) == []
        assert [c["id"] for c in json.loads(ok(pulled.cli("ps", "-a", "--output", "json")))] == [name]
    finally:
        pulled.cli("rm", "-f", name)
    assert json.loads(ok(pulled.cli("ps", "-a", "--output", "json"))) == []


def test_images_lists_the_pulled_image(pulled: Daemon) -> None:
    images = json.loads(ok(pulled.cli("images", "--output", "json")))
    assert [image["name"] for image in images] == [pulled.image]
    table = ok(pulled.cli("images")).splitlines()
    assert table[0].split() == ["NAME", "DIGEST", "CREATED", "SIZE"]
    assert table[1].startswith(pulled.image)


def test_unknown_container_prints_the_detail(pulled: Daemon) -> None:
    for args in (["logs", "nosuch"], ["stop", "nosuch"], ["rm", "nosuch"], ["exec", "nosuch", "true"]):
        done = pulled.cli(*args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("cargohold: "), (args, done.stderr)
        assert "nosuch" in lines[0] and "(404)" in lines[0], (args, done.stderr)
    bad = pulled.cli("run", "--rm", "--name", "bad name", pulled.image, "true")
    assert bad.returncode == 1 and len(bad.stderr.splitlines()) == 1, bad.stderr
    assert "id: Value error, not a valid identifier" in bad.stderr and "'bad name'" in bad.stderr
    assert json.loads(ok(pulled.cli("ps", "-a", "--output", "json"))) == []


def test_published_port_on_a_network_of_its_own(pulled: Daemon) -> None:
    require_networking()
    tag = secrets.token_hex(3)
    network, subnet = f"cli-{tag}", f"10.214.{secrets.randbelow(250) + 1}.0/24"
    assert ok(pulled.cli("network", "create", "--subnet", subnet, "--bridge", f"chc{tag}", network)).strip() == network
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve = "mkdir -p /www && echo hello-from-cli > /www/index.html && exec httpd -f -p 80 -h /www"
    try:
        assert ok(pulled.cli("run", "-d", "-p", f"{port}:80", "--network", network, "--name", "web2", pulled.image,
                             "sh", "-c", serve)).strip() == "web2"
        deadline = time.monotonic() + 15
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/", timeout=2, trust_env=False)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the published port never answered"
                time.sleep(0.1)
        assert response.text == "hello-from-cli\n"
        assert f"0.0.0.0:{port}->80/tcp" in ok(pulled.cli("ps"))
        networks = json.loads(ok(pulled.cli("network", "ls", "--output", "json")))
        assert {"cargohold", network} <= {n["name"] for n in networks}
        # In use: the daemon's 409, one line.
        busy = pulled.cli("network", "rm", network)
        assert busy.returncode == 1 and "(409)" in busy.stderr and len(busy.stderr.splitlines()) == 1
    finally:
        pulled.cli("rm", "-f", "web2")
        pulled.cli("network", "rm", network)
    assert network not in {n["name"] for n in json.loads(ok(pulled.cli("network", "ls", "-o", "json")))}


class Pane:
    """A tmux server of the test's own (its socket in a temp dir), one window running a
    command; read as a person sees it."""

    def __init__(self, socket: Path, command: str) -> None:
        if shutil.which("tmux") is None:
            pytest.fail("tmux is missing (make test-packages installs it)")
        self.socket = socket
        self.tmux("new-session", "-d", "-s", "client", "-x", "120", "-y", "40", command)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", str(self.socket), "-f", "/dev/null", *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "client")

    def until(self, needle: str, within: float = 20) -> str:
        deadline = time.monotonic() + within
        while needle not in (seen := self.screen()):
            assert time.monotonic() < deadline, f"{needle!r} not on the screen within {within} s:\n{seen}"
            time.sleep(0.05)
        return seen

    def kill(self) -> None:
        subprocess.run(["tmux", "-S", str(self.socket), "kill-server"], capture_output=True, timeout=10, check=False)


def test_run_it_is_an_interactive_shell(pulled: Daemon, tmp_path: Path) -> None:
    command = (f"env CARGOHOLD_HOST={pulled.host} {CARGOHOLD} run -it --rm --name tty {pulled.image} sh; "
               f"echo exited-$?; sleep 60")
    pane = Pane(tmp_path / "tmux", command)
    try:
        pane.until("/ #")
        pane.tmux("send-keys", "-t", "client", "echo $((6*7))", "Enter")
        assert "\n42" in pane.until("\n42")
        # The terminal has the pane's size (sent on attach, as a resize).
        pane.tmux("send-keys", "-t", "client", "stty size", "Enter")
        pane.until("40 120")
        pane.tmux("send-keys", "-t", "client", "C-d")
        pane.until("exited-0")
    finally:
        pane.kill()
    assert json.loads(ok(pulled.cli("ps", "-a", "--output", "json"))) == []


def test_exec_it_in_a_running_container(pulled: Daemon, tmp_path: Path) -> None:
    assert ok(pulled.cli("run", "-d", "--name", "box", pulled.image, "sleep", "1000")).strip() == "box"
    # What a command prints at once is there: the client attaches before the exec starts.
    exec_ = f"env CARGOHOLD_HOST={pulled.host} {CARGOHOLD} exec"
    pane = Pane(tmp_path / "tmux", f"{exec_} -it box echo early; echo first-$?; {exec_} -it box sh; echo exited-$?; "
                "sleep 60")
    try:
        pane.until("/ #")
        assert "early\nfirst-0\n" in pane.screen().replace("\r", "")
        pane.tmux("send-keys", "-t", "client", "echo in-$((6*7)); exit 4", "Enter")
        screen = pane.until("exited-4")
        assert "\nin-42" in screen
        for _ in range(3):  # -i, no terminal: the same, every time
            assert ok(pulled.cli("exec", "-i", "box", "echo", "early", input="")) == "early\n"
        # A process the runtime cannot start: its refusal, one line (attached first changes nothing).
        missing = pulled.cli("exec", "-i", "box", "no-such-command", input="")
        assert missing.returncode == 1 and len(missing.stderr.splitlines()) == 1, missing.stderr
        assert "no-such-command" in missing.stderr, missing.stderr
    finally:
        pane.kill()
        pulled.cli("rm", "-f", "box")
    assert json.loads(ok(pulled.cli("ps", "-a", "--output", "json"))) == []


def test_ctrl_c_on_an_attached_run_stops_the_container(pulled: Daemon) -> None:
    script = "trap 'echo stopping; exit 5' TERM; echo ready; sleep 1000 & wait"
    run = subprocess.Popen([str(CARGOHOLD), "run", "--rm", "--name", "interrupted", pulled.image, "sh", "-c", script],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "CARGOHOLD_HOST": pulled.host})
    try:
        assert run.stdout is not None
        assert run.stdout.readline() == "ready\n"
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=20)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    # SIGINT became the container's SIGTERM; its exit status is the command's.
    assert (run.returncode, out) == (5, "stopping\n"), err
    assert json.loads(ok(pulled.cli("ps", "-a", "--output", "json"))) == []


def test_pull_on_a_terminal_draws_a_bar_per_blob(pulled: Daemon, tmp_path: Path) -> None:
    pane = Pane(tmp_path / "tmux",
                f"env CARGOHOLD_HOST={pulled.host} {CARGOHOLD} -n ttypull pull --plain-http {pulled.image}; "
                "echo exited-$?; sleep 60")
    try:
        screen = pane.until("exited-0")
    finally:
        pane.kill()
    bars = [line for line in screen.splitlines() if "━" in line]
    assert len(bars) == 2, screen  # the config and the one layer
    assert any("MB" in line for line in bars), screen
    assert f"pulled {pulled.image}" in screen


# --- images: push and pull back, export and import ------------------------------------------


def test_push_to_a_repository_of_its_own_and_pull_it_back(pulled: Daemon) -> None:
    registry = pulled.image.split("/")[0]
    target = f"{registry}/client-push/busybox:v1"
    pushed = ok(pulled.cli("push", "--plain-http", pulled.image, target)).splitlines()
    # Every blob reached the new repository (uploaded or mounted from busybox's), then the manifest.
    assert [line.split(": ")[1] for line in pushed[:-1]] in (["pushed", "pushed"], ["mounted", "mounted"]), pushed
    assert pushed[-1].startswith(f"{target}: digest sha256:"), pushed
    digest = pushed[-1].split()[2]
    source = {i["name"]: i["target"]["digest"] for i in json.loads(ok(pulled.cli("images", "-o", "json")))}
    assert source == {pulled.image: digest}, "the same manifest, pushed as it was pulled"
    try:
        out = ok(pulled.cli("pull", "--plain-http", target)).splitlines()
        assert out[0] == f"resolved {target} -> {digest}" and out[-1] == f"pulled {target} ({digest})", out
        listed = {i["name"]: i["target"]["digest"] for i in json.loads(ok(pulled.cli("images", "-o", "json")))}
        assert listed == {pulled.image: digest, target: digest}
    finally:
        pulled.cli("rmi", target)
    assert [i["name"] for i in json.loads(ok(pulled.cli("images", "-o", "json")))] == [pulled.image]
    # A push that fails (its stream's error event): the detail, one line.
    failed = pulled.cli("push", "--plain-http", "nosuch:v1", target)
    assert (failed.returncode, failed.stdout) == (1, ""), failed.stderr
    assert len(failed.stderr.splitlines()) == 1 and "nosuch" in failed.stderr and "(404)" in failed.stderr


def _other_name(daemon: Daemon, repository: str) -> str:
    """A reference to the test registry under the name `localhost:PORT`: to the daemon another
    registry than the image's own, so no blob is mounted across repositories and every one is sent."""
    port = daemon.image.split("/")[0].rsplit(":", 1)[1]
    return f"localhost:{port}/{repository}/busybox:v1"


def test_push_progress_stream_reports_each_blob_then_the_result(pulled: Daemon) -> None:
    target = _other_name(pulled, "streamed")
    body = {"reference": target, "plain_http": True}
    path = f"/images/{pulled.image}/push"
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(pulled.process.socket)), base_url=BASE_URL,
                      timeout=60) as http:
        with http.stream("POST", path, json=body, headers={"Accept": "text/event-stream"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = list(server_sent_events(response.iter_lines()))
        kinds = [kind for kind, _ in events]
        assert kinds[-1] == "done" and kinds.count("done") == 1 and "error" not in kinds, kinds
        result = events[-1][1]
        blobs = {data["digest"]: data for kind, data in events if kind == "pushed"}
        assert len(blobs) == 2 and {b["outcome"] for b in blobs.values()} == {"uploaded"}, blobs  # config, layer
        for digest, blob in blobs.items():
            sent = [(at, data) for at, (kind, data) in enumerate(events)
                    if kind == "progress" and data["digest"] == digest]
            counts = [data["bytes"] for _, data in sent]
            assert counts == sorted(counts) and counts[-1] == blob["size"], (digest, counts)
            assert {data["total"] for _, data in sent} == {blob["size"]}
            assert sent[-1][0] < kinds.index("pushed", sent[-1][0]), "a blob's progress comes before it is pushed"
        layer = max(blobs.values(), key=lambda blob: blob["size"])
        assert layer["size"] > 1 << 20
        assert sum(1 for kind, data in events if kind == "progress" and data["digest"] == layer["digest"]) >= 2
        manifests = [data for kind, data in events if kind == "manifest"]
        assert manifests[-1]["digest"] == result["digest"] and manifests[-1]["tag"] == "v1", manifests
        assert kinds.index("manifest") > max(at for at, kind in enumerate(kinds) if kind == "pushed")
        assert result["reference"] == target and sorted(result["pushed"]) == sorted(blobs)
        # Without Accept: the JSON answer, as before; every blob is there now.
        again = http.post(path, json=body)
        assert again.status_code == 200 and again.headers["content-type"] == "application/json", again.text
        assert sorted(again.json()["existing"]) == sorted(blobs) and again.json()["pushed"] == []
        assert again.json()["digest"] == result["digest"]
        # A push that fails streams its problem, with the status the plain call answers.
        with http.stream("POST", "/images/nosuch:latest/push", json=body,
                         headers={"Accept": "text/event-stream"}) as response:
            failed = list(server_sent_events(response.iter_lines()))
        assert [kind for kind, _ in failed] == ["error"] and failed[0][1]["status"] == 404, failed
        assert http.post("/images/nosuch:latest/push", json=body).status_code == 404


def test_push_on_a_terminal_draws_a_bar_per_blob(pulled: Daemon, tmp_path: Path) -> None:
    target = _other_name(pulled, "ttypush")
    pane = Pane(tmp_path / "tmux", f"env CARGOHOLD_HOST={pulled.host} {CARGOHOLD} push --plain-http "
                f"{pulled.image} {target}; echo exited-$?; sleep 60")
    try:
        screen = pane.until("exited-0")
    finally:
        pane.kill()
    bars = [line for line in screen.splitlines() if "━" in line]
    assert len(bars) == 2, screen  # the config and the one layer, each sent whole
    assert sum(": pushed" in line for line in screen.splitlines()) == 2, screen
    assert any("MB" in line for line in bars), screen
    assert f"{target}: digest" in screen  # then the digest (the line is wider than the pane)


def test_export_rmi_import_brings_the_image_back(pulled: Daemon, tmp_path: Path) -> None:
    before = json.loads(ok(pulled.cli("images", "-o", "json")))
    archive = tmp_path / "busybox.tar"
    assert ok(pulled.cli("export", "-o", str(archive), pulled.image)) == ""
    assert tarfile.is_tarfile(archive)
    with tarfile.open(archive) as tar:
        assert {"oci-layout", "index.json"} <= set(tar.getnames())
    assert ok(pulled.cli("rmi", pulled.image)) == f"Untagged: {pulled.image}\n"
    assert json.loads(ok(pulled.cli("images", "-o", "json"))) == []
    # Gone: the daemon's 404 on the next rmi, one line.
    again = pulled.cli("rmi", pulled.image)
    assert again.returncode == 1 and "(404)" in again.stderr and len(again.stderr.splitlines()) == 1
    digest = before[0]["target"]["digest"]
    assert ok(pulled.cli("import", str(archive))) == f"imported {pulled.image} ({digest})\n"
    after = json.loads(ok(pulled.cli("images", "-o", "json")))
    assert [(i["name"], i["target"]["digest"]) for i in after] == [(pulled.image, digest)]
    assert pulled.image in ok(pulled.cli("images"))
    assert ok(pulled.cli("run", "--rm", pulled.image, "echo", "back")) == "back\n"


# --- kill, attach, stats ------------------------------------------------------------------


def test_kill_a_detached_container_and_its_exit_status(pulled: Daemon) -> None:
    ok(pulled.cli("run", "-d", "--name", "killed", pulled.image, "sleep", "1000"))
    try:
        assert ok(pulled.cli("kill", "killed")) == "killed\n"
        # Exit means delete: the task goes; what inspect and ps -a show is its recorded exit.
        deadline = time.monotonic() + 10
        while "task" in (inspected := json.loads(ok(pulled.cli("inspect", "killed")))[0]):
            assert time.monotonic() < deadline, inspected
            time.sleep(0.1)
        assert inspected["exit"]["exit_status"] == 128 + signal.SIGKILL
        assert json.loads(ok(pulled.cli("ps", "-o", "json"))) == []
        listed = json.loads(ok(pulled.cli("ps", "-a", "-o", "json")))
        assert [(c["id"], c["task"], c["exit"]["exit_status"]) for c in listed] == [("killed", None, 137)]
        row = ok(pulled.cli("ps", "-a")).splitlines()[1]
        assert row.startswith("killed") and "Exited (137) " in row, row
        # Killing what is no longer running: the daemon's refusal, one line, status 1.
        late = pulled.cli("kill", "killed")
        assert late.returncode == 1 and len(late.stderr.splitlines()) == 1 and "killed" in late.stderr, late.stderr
        # A container made again under the id has not run: the old exit is not its own.
        assert ok(pulled.cli("rm", "killed")) == "killed\n"
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(pulled.process.socket)), base_url=BASE_URL) as http:
            assert http.post("/containers", json={"id": "killed", "image": pulled.image}).status_code == 201
        assert "exit" not in json.loads(ok(pulled.cli("inspect", "killed")))[0]
        row = ok(pulled.cli("ps", "-a")).splitlines()[1]
        assert row.startswith("killed") and "Created" in row and "Exited" not in row, row
    finally:
        pulled.cli("rm", "-f", "killed")
    assert json.loads(ok(pulled.cli("ps", "-a", "-o", "json"))) == []


def test_attach_to_a_detached_cat_with_piped_stdin(pulled: Daemon) -> None:
    ok(pulled.cli("run", "-d", "-i", "--name", "cat", pulled.image, "cat"))
    try:
        # Our stdin reaches cat; its EOF closes cat's stdin, cat exits 0, and so does attach.
        done = pulled.cli("attach", "cat", input="first\nsecond\n", timeout=30)
        assert (done.returncode, done.stdout) == (0, "first\nsecond\n"), done.stderr
        assert json.loads(ok(pulled.cli("inspect", "cat")))[0]["exit"]["exit_status"] == 0
    finally:
        pulled.cli("rm", "-f", "cat")


def limited_stats(daemon: Daemon, name: str, *flags: str) -> list[dict[str, Any]]:
    """`stats --output json NAME` once the monitor has a reading with a memory limit: it reads
    once a second, and its first reading may predate the limit (`run -m` sets it by PATCH)."""
    deadline = time.monotonic() + 5
    while True:
        stats: list[dict[str, Any]] = json.loads(ok(daemon.cli("stats", *flags, "--output", "json", name)))
        if stats and stats[0]["memory_limit_bytes"] is not None:
            return stats
        assert time.monotonic() < deadline, f"no reading with a memory limit for {name}: {stats}"
        time.sleep(0.2)


def test_stats_no_stream_json_has_the_tasks_memory(pulled: Daemon) -> None:
    ok(pulled.cli("run", "-d", "--name", "measured", "--memory", str(32 * 1024 * 1024), pulled.image,
                  "sleep", "1000"))
    try:
        stats = limited_stats(pulled, "measured", "--no-stream")
        assert [s["container_id"] for s in stats] == ["measured"]
        assert stats[0]["memory_limit_bytes"] == 32 * 1024 * 1024
        assert 0 < stats[0]["memory_usage_bytes"] < 32 * 1024 * 1024
        assert stats[0]["pids_current"] == 1
    finally:
        pulled.cli("rm", "-f", "measured")


def _stats_row(screen: str, name: str) -> list[str] | None:
    """The cells of `name`'s row in a stats table: id, CPU %, usage, "/", limit, pids, net ..."""
    return next((line.split() for line in screen.splitlines() if line.split()[:1] == [name]), None)


def test_stats_live_table_refreshes_until_ctrl_c(pulled: Daemon, tmp_path: Path) -> None:
    # bash: it carries on after a child that Ctrl-C made exit (rather than die), so the status is printed.
    pane = Pane(tmp_path / "tmux", f"bash -c 'env CARGOHOLD_HOST={pulled.host} {CARGOHOLD} stats; echo exited-$?; "
                "sleep 60'")
    try:
        pane.until("CONTAINER")
        assert _stats_row(pane.screen(), "live") is None
        # A process more every half second: the PIDS cell grows at every refresh.
        ok(pulled.cli("run", "-d", "--name", "live", pulled.image, "sh", "-c",
                      "while :; do sleep 1000 & sleep 0.5; done"))
        deadline = time.monotonic() + 20
        while (first := _stats_row(pane.screen(), "live")) is None:  # it appears at a refresh
            assert time.monotonic() < deadline, pane.screen()
            time.sleep(0.05)
        while True:
            row = _stats_row(pane.screen(), "live")
            if row is not None and int(row[5]) > int(first[5]) and row[1].endswith("%"):
                break
            assert time.monotonic() < deadline, (first, pane.screen())
            time.sleep(0.05)
        assert row[4] == "unlimited" and row[2].endswith("B"), row
        ok(pulled.cli("rm", "-f", "live"))
        while _stats_row(pane.screen(), "live") is not None:  # and goes with its task
            assert time.monotonic() < deadline, pane.screen()
            time.sleep(0.05)
        pane.tmux("send-keys", "-t", "client", "C-c")
        screen = pane.until("exited-130")
    finally:
        pane.kill()
        pulled.cli("rm", "-f", "live")
    assert "Aborted" not in screen and "Traceback" not in screen, screen
    assert "CONTAINER" in screen  # the last table stays


def test_completion_gives_commands_and_container_ids(pulled: Daemon, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    def complete(line: str) -> list[str]:
        # In-process (the same entry point, as bash's completion function runs it): a process
        # start each would cost a third of a second; one real one follows.
        with monkeypatch.context() as env:  # not for the subprocesses: they would complete too
            env.setenv("CARGOHOLD_HOST", pulled.host)
            env.setenv("_CARGOHOLD_COMPLETE", "complete_bash")
            env.setenv("COMP_WORDS", line)
            env.setenv("COMP_CWORD", str(len(line.split(" ")) - 1))
            assert main([]) == 0
        return capsys.readouterr().out.split()

    assert {"run", "exec", "attach", "ps", "logs", "stats", "pull", "push", "network"} <= set(complete("cargohold "))
    assert complete("cargohold netw") == ["network"]
    assert complete("cargohold network ") == ["ls", "create", "rm"]
    ok(pulled.cli("run", "-d", "--name", "completed", pulled.image, "sleep", "1000"))
    try:
        for line in ("cargohold logs ", "cargohold exec -it ", "cargohold rm -f comp", "cargohold inspect c"):
            assert complete(line) == ["completed"], line
        assert complete("cargohold kill x") == []
        # The ids of the daemon and namespace the line names; no daemon there completes nothing.
        assert complete("cargohold -n elsewhere logs ") == []
        assert complete(f"cargohold --host unix://{pulled.process.base}/none.sock logs ") == []
        done = pulled.cli(env={"_CARGOHOLD_COMPLETE": "complete_bash", "COMP_WORDS": "cargohold stop ",
                               "COMP_CWORD": "2"})
        assert ok(done).split() == ["completed"]
    finally:
        pulled.cli("rm", "-f", "completed")
    script = ok(pulled.cli("--show-completion", "bash"))
    assert "_CARGOHOLD_COMPLETE=complete_bash" in script and "complete " in script


# --- a daemon over TCP: TLS (client certificates required) and a bearer token ---------------


def test_tcp_host_over_tls_with_the_token_and_with_a_wrong_one(pulled: Daemon) -> None:
    host = f"tcp://127.0.0.1:{pulled.tcp_port}"
    # CARGOHOLD_TLS_CA/CERT/KEY as --tlscacert/--tlscert/--tlskey: TLS, the CA trusted, our certificate shown.
    assert json.loads(ok(pulled.cli("--host", host, "ps", "-a", "-o", "json", env=pulled.tls_env))) == []
    good = pulled.cli("--host", host, "run", "--rm", pulled.image, "echo", "over-tls", env=pulled.tls_env)
    assert ok(good) == "over-tls\n"  # attached through wss://
    flags = ("--tlscacert", str(pulled.pki.ca), "--tlscert", str(pulled.pki.client[0]),
             "--tlskey", str(pulled.pki.client[1]))
    assert [i["name"] for i in json.loads(ok(pulled.cli("--host", host, *flags, "images", "-o", "json",
                                                        env={"CARGOHOLD_TOKEN": TOKEN})))] == [pulled.image]
    bare = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
    no_token = {**bare, **{k: v for k, v in pulled.tls_env.items() if k != "CARGOHOLD_TOKEN"}}
    token_file = pulled.process.base / "client-token"
    token_file.write_text(TOKEN + "\n")
    listed = subprocess.run([str(CARGOHOLD), "--host", host, "--token-file", str(token_file), "images", "-o", "json"],
                            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, env=no_token)
    assert listed.returncode == 0, listed.stderr
    assert [i["name"] for i in json.loads(listed.stdout)] == [pulled.image]
    for token, detail in (("a-wrong-token-of-32-characters!!", "wrong bearer token"),
                          (None, "needs 'Authorization: Bearer <token>' over TCP")):
        env = {**bare, **{k: v for k, v in pulled.tls_env.items() if k != "CARGOHOLD_TOKEN"},
               **({"CARGOHOLD_TOKEN": token} if token else {})}
        refused = subprocess.run([str(CARGOHOLD), "--host", host, "run", "--name", "intruder", pulled.image, "true"],
                                 capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, env=env)
        assert (refused.returncode, refused.stdout) == (1, ""), (token, refused.stderr)
        lines = refused.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("cargohold: ") and "(401)" in lines[0], refused.stderr
        assert detail in lines[0], refused.stderr
    # Refused changes nothing.
    assert json.loads(ok(pulled.cli("ps", "-a", "-o", "json"))) == []


def test_tls_refusals_say_which_side_refused_on_one_line(pulled: Daemon) -> None:
    host = f"tcp://127.0.0.1:{pulled.tcp_port}"
    pki = pulled.pki
    cases = [
        # A CA that did not sign the daemon's certificate.
        ({"CARGOHOLD_TLS_CA": str(pki.other_ca), "CARGOHOLD_TLS_CERT": str(pki.client[0]),
          "CARGOHOLD_TLS_KEY": str(pki.client[1])},
         f"presented a certificate that --tlscacert {pki.other_ca} does not verify"),
        # The daemon requires a client certificate (--tls-client-ca) and gets none.
        ({"CARGOHOLD_TLS_CA": str(pki.ca)}, "requires a client certificate"),
        # One its CA did not sign.
        ({"CARGOHOLD_TLS_CA": str(pki.ca), "CARGOHOLD_TLS_CERT": str(pki.stranger[0]),
          "CARGOHOLD_TLS_KEY": str(pki.stranger[1])}, f"refused our client certificate (--tlscert {pki.stranger[0]})"),
        # Plain HTTP to a TLS listener.
        ({}, "hung up without an answer: if it serves TLS, add --tls"),
        # Half a client certificate.
        ({"CARGOHOLD_TLS_CA": str(pki.ca), "CARGOHOLD_TLS_CERT": str(pki.client[0])},
         "--tlscert and --tlskey go together"),
    ]
    bare = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
    for env, words in cases:
        done = subprocess.run([str(CARGOHOLD), "--host", host, "ps"], capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL, env={**bare, **env, "CARGOHOLD_TOKEN": TOKEN})
        assert (done.returncode, done.stdout) == (1, ""), (env, done.stderr)
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("cargohold: ") and words in lines[0], (env, done.stderr)
