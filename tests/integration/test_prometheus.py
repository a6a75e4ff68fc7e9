"""A real Prometheus scrapes a real daemon: the container series reach PromQL.

The daemon runs as a subprocess (`python -m app serve`) on loopback TCP with a bearer
token; Prometheus (Debian's package, /usr/bin/prometheus) scrapes it every second with
that token (`authorization.credentials_file`), from its own storage dir, on loopback.
A busybox task runs; `container_memory_usage_bytes` for it must come back from
`/api/v1/query` within 15 s. Without Prometheus this skips, and fails under CI=true.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Listener, Settings
from tests.conftest import free_port, leftovers, wait_for_sync
from tests.rootfs import write_busybox_tar
from tests.runtime.conftest import require_runtime

pytestmark = pytest.mark.runtime

PROMETHEUS = Path("/usr/bin/prometheus")
REPO = Path(__file__).resolve().parents[2]
NAMESPACE = f"prom-{os.getpid()}"
HEADERS = {"Cargohold-Namespace": NAMESPACE}
QUERY_WITHIN = 15.0


def require_prometheus() -> None:
    if PROMETHEUS.exists():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{PROMETHEUS} is missing; CI must install Debian's prometheus package")
    pytest.skip(f"needs Prometheus ({PROMETHEUS}: apt-get install prometheus)")


def answers(client: httpx.Client, path: str) -> bool:
    """`path` answers 200; False while the server is not listening yet."""
    try:
        return client.get(path).status_code == 200
    except httpx.TransportError:
        return False


def stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM this process (by its pid), then SIGKILL if it will not go."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def log_of(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


@pytest.fixture
def prometheus_settings(tmp_path: Path) -> Iterator[Settings]:
    """The daemon's directories; afterwards nothing of it may be left."""
    require_prometheus()
    require_runtime()
    settings = Settings(root=tmp_path / "root", state=tmp_path / "state", listeners=())
    yield settings
    assert leftovers(settings) == {}, "the test left these behind"


def test_prometheus_scrapes_container_metrics(prometheus_settings: Settings, tmp_path: Path) -> None:
    settings = prometheus_settings
    daemon_port, prometheus_port = free_port(), free_port()
    token_file = tmp_path / "token"
    token_file.write_text("prometheus-test-token\n")
    token_file.chmod(0o600)
    daemon_log, prometheus_log = tmp_path / "daemon.log", tmp_path / "prometheus.log"
    tsdb = tmp_path / "tsdb"
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: cargohold\n"
        "    metrics_path: /metrics\n"
        "    authorization:\n"
        "      type: Bearer\n"
        f"      credentials_file: {token_file}\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{daemon_port}']\n"
    )
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{daemon_port}",
        headers={"Authorization": "Bearer prometheus-test-token", **HEADERS},
        timeout=60,
    )
    prom = httpx.Client(base_url=f"http://127.0.0.1:{prometheus_port}", timeout=10)
    daemon: subprocess.Popen[bytes] | None = None
    prometheus: subprocess.Popen[bytes] | None = None
    timings: dict[str, float] = {}
    test_started = time.monotonic()
    try:
        with daemon_log.open("wb") as out:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "app", "serve", "--root", str(settings.root), "--state", str(settings.state),
                 "--listen", Listener.parse(f"tcp://127.0.0.1:{daemon_port}").url,
                 "--token-file", str(token_file), "--monitor-interval", "0.5", "--log-level", "warning"],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            )
        wait_for_sync(lambda: daemon.poll() is not None or answers(api, "/healthz"), "daemon up", 30, every=0.1)
        timings["daemon up"] = time.monotonic() - test_started
        assert daemon.poll() is None, f"the daemon exited: {log_of(daemon_log)}"
        assert httpx.get(f"http://127.0.0.1:{daemon_port}/metrics").status_code == 401, "/metrics needs the token"

        tar = write_busybox_tar(tmp_path / "busybox.tar")
        imported = api.post("/snapshots/import?name=busybox", content=tar.read_bytes())
        assert imported.status_code == 201, imported.text
        assert api.post("/snapshots", json={"key": "web-rootfs", "parent": "busybox"}).status_code == 201
        container = {
            "id": "web", "snapshot_key": "web-rootfs", "runtime": {"name": "runc"},
            "spec": {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": ["sleep", "1000"]}},
        }
        assert api.post("/containers", json=container).status_code == 201
        assert api.post("/tasks", json={"container_id": "web"}).status_code == 201
        assert api.post("/tasks/web/start").status_code == 200

        started = time.monotonic()
        with prometheus_log.open("wb") as out:
            prometheus = subprocess.Popen(
                [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
                 f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT,
            )
        wait_for_sync(
            lambda: prometheus.poll() is not None or answers(prom, "/-/ready"), "Prometheus ready", 30, every=0.1
        )
        assert prometheus.poll() is None, f"Prometheus exited: {log_of(prometheus_log)}"
        timings["prometheus ready"] = time.monotonic() - started

        def sample() -> list[dict[str, Any]]:
            answer = prom.get("/api/v1/query", params={"query": 'container_memory_usage_bytes{container_id="web"}'})
            assert answer.status_code == 200, answer.text
            result: list[dict[str, Any]] = answer.json()["data"]["result"]
            return result

        try:
            result = wait_for_sync(sample, "container_memory_usage_bytes in PromQL", QUERY_WITHIN, every=0.25)
        except AssertionError:
            targets = prom.get("/api/v1/targets").json()
            raise AssertionError(f"no sample; targets: {targets}; daemon log: {log_of(daemon_log)}") from None
        timings["first sample"] = time.monotonic() - started
        assert len(result) == 1, result
        labels, (_, value) = result[0]["metric"], result[0]["value"]
        assert labels["container_id"] == "web" and labels["namespace"] == NAMESPACE
        assert labels["job"] == "cargohold" and labels["instance"] == f"127.0.0.1:{daemon_port}"
        assert float(value) > 0

        health = [target["health"] for target in prom.get("/api/v1/targets").json()["data"]["activeTargets"]]
        assert health == ["up"]
        up = prom.get("/api/v1/query", params={"query": 'up{job="cargohold"}'}).json()["data"]["result"]
        assert [entry["value"][1] for entry in up] == ["1"]
    finally:
        try:
            if daemon is not None and daemon.poll() is None:
                deleted = api.delete("/tasks/web")
                assert deleted.status_code in (200, 404), deleted.text
        finally:
            stopping = time.monotonic()
            if prometheus is not None:
                stop(prometheus)
            timings["prometheus stop"] = time.monotonic() - stopping
            if daemon is not None:
                stop(daemon)
            timings["daemon stop"] = time.monotonic() - stopping - timings["prometheus stop"]
            print("timings (s):", {name: round(seconds, 2) for name, seconds in timings.items()})
            api.close()
            prom.close()
