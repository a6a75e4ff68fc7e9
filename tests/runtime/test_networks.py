"""Networks (DESIGN "Networks", issue 15): tasks on CNI bridge networks with published ports,
and nothing left behind.

Real parts only: Debian's containernetworking-plugins (bridge, host-local, portmap,
loopback) run by the daemon, iptables, busybox httpd and wget in the containers. Each test
makes networks of its own (a random /24 in 10.214.0.0/16 and a bridge named `cht...`), never
touches the default network's bridge, and sends traffic only to 127.0.0.1 published ports
and between its own containers. Leak checks compare, before and after: veth and bridge
links, the daemon's netns dir, the IPAM allocations, and every iptables rule or chain a
task's CNI ADD makes (each carries the task's CNI id in a comment, or is a per-task chain).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.config import Listener, Settings
from tests.conftest import free_port, leftovers, links, wait_for
from tests.runtime.conftest import delete_all_tasks, import_busybox, make_container, require_runtime, serving
from tests.runtime.daemon import daemon_in
from tests.runtime.tasks import LONG, gone, log_lines, no_tasks, problem, run_task, texts, wait_exit

pytestmark = [pytest.mark.anyio, pytest.mark.runtime]

CNI_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")
PROBLEM = "application/problem+json"


def require_networking() -> None:
    """The CNI plugins, iptables and ip: missing, these tests skip here and FAIL under CI=true."""
    require_runtime()
    missing = [name for name in CNI_PLUGINS if not (CNI_DIR / name).exists()]
    missing += [tool for tool in ("iptables-save", "ip", "unshare") if shutil.which(tool) is None]
    if not missing:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"network tests cannot run (missing {', '.join(missing)}); CI must install "
                    "containernetworking-plugins and iptables")
    pytest.skip(f"network tests need containernetworking-plugins and iptables (missing {', '.join(missing)})")


# --- what a test network is, and what must not outlive a task -----------------------------


def fresh_network(prefix: str = "t") -> dict[str, str]:
    """A network body of the test's own: a random /24 in 10.214.0.0/16 (off the default's
    10.213.0.0/16) and a bridge name no other run uses."""
    tag = secrets.token_hex(3)
    return {"name": f"{prefix}-{tag}", "subnet": f"10.214.{secrets.randbelow(250) + 1}.0/24", "bridge": f"cht{tag}"}


_TASK_CHAIN = re.compile(r"^:CNI-(?!HOSTPORT-|FORWARD |ADMIN )")
# The firewall plugin's per-task rules accept the task's address in its CNI-FORWARD chain;
# the chain itself, its jump from FORWARD and the admin chain are made once and stay.
_FIREWALL_RULE = re.compile(r"^-A CNI-FORWARD (?!.*CNI-ADMIN)")


def task_iptables_rules() -> set[str]:
    """The iptables rules and chains CNI makes per task: each rule names its task in a
    comment (`id: "..."`) or is the firewall plugin's for its address, each chain is
    CNI-<hash> or CNI-DN-<hash> (portmap's fixed CNI-HOSTPORT-* chains and the firewall's
    CNI-FORWARD and CNI-ADMIN stay once made, as in any CNI host)."""
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    return {
        re.sub(r"\[\d+:\d+\]", "", line) for line in out.splitlines()
        if 'id: "' in line or _TASK_CHAIN.match(line) or _FIREWALL_RULE.match(line)
    }


def ipam_allocations(state: Path) -> set[str]:
    """host-local's files that hold an address (not its lock or last-reserved marker)."""
    ipam = state / "networks" / "ipam"
    return {
        str(path.relative_to(ipam)) for path in ipam.glob("*/*")
        if path.name != "lock" and not path.name.startswith("last_reserved_ip")
    } if ipam.is_dir() else set()


def netns_files(state: Path) -> set[str]:
    directory = state / "networks" / "netns"
    return {path.name for path in directory.iterdir()} if directory.is_dir() else set()


def network_state(state: Path) -> dict[str, Any]:
    return {
        "veths": {name for name in links() if name.startswith("veth")},
        "netns": netns_files(state),
        "ipam": ipam_allocations(state),
        "iptables": task_iptables_rules(),
    }


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def net_settings(tmp_path: Path) -> Settings:
    require_networking()
    return Settings(
        root=tmp_path / "root", state=tmp_path / "state",
        listeners=(Listener.parse(f"unix://{tmp_path / 'state' / 'cargohold.sock'}"),),
    )


@pytest.fixture
async def net(
    net_settings: Settings, busybox_tar: Path, ns_headers: dict[str, str]
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    """A daemon with busybox imported and a network of the test's own (its body); afterwards
    the network is deleted (its bridge goes) and nothing may be left."""
    before = network_state(net_settings.state)
    network = fresh_network()
    try:
        async with serving(net_settings) as client:
            await import_busybox(client, busybox_tar, ns_headers)
            created = await client.post("/networks", json=network)
            assert created.status_code == 201, created.text
            yield client, network
            await delete_all_tasks(client)
            await delete_all_containers(client, ns_headers)
            deleted = await client.delete(f"/networks/{network['name']}")
            assert deleted.status_code == 204, deleted.text
        assert network["bridge"] not in links()
    finally:  # a failed test must not leave its bridge on the host
        subprocess.run(["ip", "link", "delete", network["bridge"]], capture_output=True, check=False)
    assert network_state(net_settings.state) == before
    assert leftovers(net_settings) == {}


async def delete_all_containers(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    for container in (await client.get("/containers", headers=headers)).json()["containers"]:
        await client.delete(f"/containers/{container['id']}", headers=headers)


def httpd(page: str, port: int = 80) -> list[str]:
    """busybox httpd in the foreground, serving `page` as /index.html."""
    return ["sh", "-c", f"mkdir -p /www && echo {page} > /www/index.html && exec httpd -f -p {port} -h /www"]


async def networked(
    client: httpx.AsyncClient, headers: dict[str, str], container_id: str, args: list[str], network: str,
    ports: list[dict[str, Any]] | None = None, **extra: Any,
) -> dict[str, Any]:
    """A container on `network` running `args`, and its task, started."""
    prepared = await client.post("/snapshots", json={"key": f"{container_id}-rootfs", "parent": "busybox"},
                                 headers=headers)
    assert prepared.status_code == 201, prepared.text
    body = {
        "id": container_id, "snapshot_key": f"{container_id}-rootfs",
        "spec": {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": args}},
        "network": {"name": network, "ports": ports or [], **extra},
    }
    created = await client.post("/containers", json=body, headers=headers)
    assert created.status_code == 201, created.text
    return await run_task(client, headers, container_id)


async def page_at(port: int, within: float = 10) -> str:
    """The page served on 127.0.0.1:`port` once it answers."""

    async def fetched() -> str | None:
        async with httpx.AsyncClient(timeout=2) as web:
            try:
                response = await web.get(f"http://127.0.0.1:{port}/")
            except httpx.TransportError:
                return None
        return response.text if response.status_code == 200 else None

    return await wait_for(fetched, f"a page on 127.0.0.1:{port}", within, every=0.1)


# --- 1. a published port reaches busybox httpd ----------------------------------------------


@pytest.mark.parametrize("host_ip", [{"host_ip": "127.0.0.1"}, {}], ids=["loopback", "every-address"])
async def test_published_port_serves_the_page_and_task_shows_its_address(
    net: tuple[httpx.AsyncClient, dict[str, str]], ns_headers: dict[str, str], host_ip: dict[str, str]
) -> None:
    client, network = net
    port = free_port()
    ports = [{"host_port": port, "container_port": 80, **host_ip}]
    await networked(client, ns_headers, "web", httpd("hello-from-web"), network["name"], ports)
    assert (await page_at(port)).strip() == "hello-from-web"

    task = (await client.get("/tasks/web", headers=ns_headers)).json()
    shown = task["network"]
    prefix = network["subnet"].rsplit(".", 1)[0] + "."
    assert shown["network"] == network["name"]
    assert shown["ip"].startswith(prefix) and shown["ip"] != prefix + "1"
    assert shown["gateway"] == prefix + "1"
    assert re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", shown["mac"])
    assert shown["ports"] == [{"host_port": port, "container_port": 80, "protocol": "tcp",
                               "host_ip": host_ip.get("host_ip")}]

    # The page went out through eth0: its counters, in the task's metrics and in /metrics.
    metrics = (await client.get("/tasks/web/metrics", headers=ns_headers)).json()
    assert metrics["network_receive_bytes"]["eth0"] > 0
    assert metrics["network_transmit_bytes"]["eth0"] > len("hello-from-web")
    scraped = {
        (family.name, sample.labels.get("container_id"), sample.labels.get("interface")): sample.value
        for family in text_string_to_metric_families((await client.get("/metrics")).text)
        for sample in family.samples if family.name.startswith("container_network_")
    }
    assert scraped[("container_network_receive_bytes", "web", "eth0")] > 0
    assert scraped[("container_network_transmit_bytes", "web", "eth0")] > len("hello-from-web")

    deleted = await client.delete("/tasks/web", headers=ns_headers)
    assert deleted.status_code == 200, deleted.text
    with pytest.raises(httpx.TransportError):
        async with httpx.AsyncClient(timeout=2) as web:
            await web.get(f"http://127.0.0.1:{port}/")


# --- 2. one container reaches another by its address -----------------------------------------


async def test_containers_on_one_network_reach_each_other(
    net: tuple[httpx.AsyncClient, dict[str, str]], ns_headers: dict[str, str]
) -> None:
    client, network = net
    await networked(client, ns_headers, "server", httpd("hello-neighbour"), network["name"])
    server_ip = (await client.get("/tasks/server", headers=ns_headers)).json()["network"]["ip"]
    fetch = ["sh", "-c", f"for i in $(seq 50); do wget -q -O - http://{server_ip}/ && exit 0; sleep 0.1; done;"
             " exit 1"]
    await networked(client, ns_headers, "client", fetch, network["name"])
    exit_ = await wait_exit(client, ns_headers, "client")
    lines = texts(await log_lines(client, ns_headers, "/tasks/client/logs"))
    assert exit_["exit_status"] == 0, lines
    assert "hello-neighbour" in lines
    client_ip = (await client.get("/containers/client", headers=ns_headers)).json()
    assert client_ip["network"]["name"] == network["name"]


# --- 3. /etc/hosts, /etc/hostname, /etc/resolv.conf -------------------------------------------


async def test_etc_files_name_the_task_and_the_hosts_resolvers(
    net: tuple[httpx.AsyncClient, dict[str, str]], ns_headers: dict[str, str]
) -> None:
    from app.network.files import resolv_conf

    client, network = net
    show = ["sh", "-c", "cat /etc/hosts; echo ---; cat /etc/hostname; echo ---; cat /etc/resolv.conf; echo ---;"
            " hostname; sleep 1000"]
    await networked(client, ns_headers, "named", show, network["name"], hostname="webhost")
    ip = (await client.get("/tasks/named", headers=ns_headers)).json()["network"]["ip"]

    async def shown() -> list[str] | None:
        lines = texts(await log_lines(client, ns_headers, "/tasks/named/logs"))
        return lines if lines.count("---") == 3 and lines[-1] != "---" else None

    lines = await wait_for(shown, "the task prints its /etc files")
    hosts, hostname, resolv, uts = "\n".join(lines).split("\n---\n")
    assert f"{ip}\twebhost" in hosts.splitlines()
    assert "127.0.0.1\tlocalhost" in hosts.splitlines()
    assert hostname == "webhost"
    assert resolv == resolv_conf().rstrip("\n")
    assert any(line.startswith("nameserver ") for line in resolv.splitlines()) or "nameserver" not in Path(
        "/etc/resolv.conf").read_text()
    assert uts == "webhost"


# --- 4. the networks API ---------------------------------------------------------------------


async def test_networks_api_and_its_refusals(
    net: tuple[httpx.AsyncClient, dict[str, str]], ns_headers: dict[str, str], net_settings: Settings
) -> None:
    client, network = net
    listed = (await client.get("/networks")).json()["networks"]
    by_name = {n["name"]: n for n in listed}
    assert by_name["cargohold"]["bridge"] == "cargohold0"
    assert by_name["cargohold"]["subnet"] == net_settings.default_subnet
    mine = by_name[network["name"]]
    assert mine["bridge"] == network["bridge"] and mine["subnet"] == network["subnet"]
    assert mine["driver"] == "bridge" and mine["gateway"] == network["subnet"].rsplit(".", 1)[0] + ".1"
    assert (await client.get(f"/networks/{network['name']}")).json() == mine

    other = fresh_network()
    cases = [
        ({**other, "name": network["name"]}, 409, network["name"]),
        ({**other, "subnet": network["subnet"]}, 409, "overlaps"),
        ({**other, "subnet": "10.213.4.0/24"}, 409, "overlaps"),  # inside the default network's
        ({**other, "bridge": network["bridge"]}, 409, network["bridge"]),
        ({**other, "subnet": "10.214.0.1/24"}, 422, "has host bits set"),
        ({**other, "subnet": "10.214.300.0/24"}, 422, "not an IPv4 network"),
        ({**other, "subnet": "10.214.0.0/31"}, 422, "/30"),
        ({**other, "name": "-bad"}, 422, "name"),
        ({**other, "bridge": "a-name-far-too-long"}, 422, "bridge"),
    ]
    for asked, status, named in cases:
        refused = problem(await client.post("/networks", json=asked), status)
        assert named in str(refused), (asked, refused)
    assert len((await client.get("/networks")).json()["networks"]) == len(listed)  # nothing made
    assert other["bridge"] not in links()
    problem(await client.get("/networks/nope"), 404)
    problem(await client.delete("/networks/nope"), 404)
    problem(await client.get("/networks/-bad"), 400)

    # A container's network must exist, its ports be ports: nothing is made otherwise.
    await make_container(client, ns_headers, "user", LONG)
    bodies: list[tuple[dict[str, Any], int, str]] = [
        ({"name": "nope"}, 404, '"nope"'),
        ({"name": network["name"], "ports": [{"host_port": 0, "container_port": 80}]}, 422, "host_port"),
        ({"name": network["name"], "ports": [{"host_port": 8080, "container_port": 65536}]}, 422, "container_port"),
        ({"name": network["name"], "ports": [{"host_port": 8080, "container_port": 80, "protocol": "sctp"}]}, 422,
         "protocol"),
        ({"name": network["name"], "ports": [{"host_port": 8080, "container_port": 80},
                                              {"host_port": 8080, "container_port": 81, "host_ip": "127.0.0.1"}]},
         422, "given twice"),
        ({"name": network["name"], "hostname": "not_a_hostname"}, 422, "hostname"),
    ]
    for wanted, status, named in bodies:
        body: dict[str, Any] = {"id": "joiner", "snapshot_key": "user-rootfs",
                "spec": {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": LONG}},
                "network": wanted}
        refused = problem(await client.post("/containers", json=body, headers=ns_headers), status)
        assert named in str(refused), (wanted, refused)
    problem(await client.get("/containers/joiner", headers=ns_headers), 404)

    # In use by a container (metadata only): 409; once it is gone, the network can go.
    extra = fresh_network()
    assert (await client.post("/networks", json=extra)).status_code == 201
    patched = await client.patch("/containers/user", json={"network": {"name": extra["name"]}},
                                 headers={**ns_headers, "Content-Type": "application/merge-patch+json"})
    assert patched.status_code == 200, patched.text
    in_use = problem(await client.delete(f"/networks/{extra['name']}"), 409)
    assert '"user"' in in_use["detail"]
    problem(await client.delete("/networks/cargohold"), 409)
    assert (await client.delete("/containers/user", headers=ns_headers)).status_code == 204
    assert (await client.delete(f"/networks/{extra['name']}")).status_code == 204
    problem(await client.get(f"/networks/{extra['name']}"), 404)


# --- 5. a host port that is taken: 409 before anything is made ---------------------------------


async def test_taken_host_port_is_refused_at_task_create(
    net: tuple[httpx.AsyncClient, dict[str, str]], ns_headers: dict[str, str], net_settings: Settings
) -> None:
    client, network = net
    port = free_port()
    ports = [{"host_port": port, "container_port": 80, "host_ip": "127.0.0.1"}]
    await networked(client, ns_headers, "first", httpd("first"), network["name"], ports)
    assert (await page_at(port)).strip() == "first"
    before = network_state(net_settings.state)

    # Published by another task (also when this one asks for every address).
    for wanted in (ports, [{"host_port": port, "container_port": 80}]):
        await make_container(client, ns_headers, "second", LONG)
        patched = await client.patch("/containers/second", json={"network": {"name": network["name"],
                                                                               "ports": wanted}},
                                     headers={**ns_headers, "Content-Type": "application/merge-patch+json"})
        assert patched.status_code == 200, patched.text
        refused = problem(await client.post("/tasks", json={"container_id": "second"}, headers=ns_headers), 409)
        assert str(port) in refused["detail"] and '"first"' in refused["detail"]
        problem(await client.get("/tasks/second", headers=ns_headers), 404)
        assert network_state(net_settings.state) == before
        assert (await client.delete("/containers/second", headers=ns_headers)).status_code == 204

    # Bound by a host process.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        bound = holder.getsockname()[1]
        await make_container(client, ns_headers, "third", LONG)
        patched = await client.patch(
            "/containers/third",
            json={"network": {"name": network["name"], "ports": [{"host_port": bound, "container_port": 80,
                                                                    "host_ip": "127.0.0.1"}]}},
            headers={**ns_headers, "Content-Type": "application/merge-patch+json"})
        assert patched.status_code == 200, patched.text
        refused = problem(await client.post("/tasks", json={"container_id": "third"}, headers=ns_headers), 409)
        assert f"127.0.0.1:{bound}/tcp is in use on the host" in refused["detail"]
    problem(await client.get("/tasks/third", headers=ns_headers), 404)
    assert network_state(net_settings.state) == before
    assert {p.name for p in (net_settings.state / "tasks" / ns_headers["Cargohold-Namespace"]).iterdir()} == {"first"}


# --- 6. a CNI plugin that fails: the create fails with its message and leaves nothing -----------

FAILING_PORTMAP = """#!/bin/sh
# A portmap that refuses ADD with a CNI error (and, as the spec asks, tolerates DEL).
cat >/dev/null
if [ "$CNI_COMMAND" = ADD ]; then
    echo '{"cniVersion": "1.0.0", "code": 7, "msg": "refusing on purpose", "details": "test plugin"}'
    exit 1
fi
exit 0
"""


@pytest.mark.parametrize("broken", ["missing", "failing"])
async def test_failing_cni_plugin_fails_the_create_and_leaves_nothing(
    net_settings: Settings, busybox_tar: Path, ns_headers: dict[str, str], tmp_path: Path, broken: str
) -> None:
    plugins = tmp_path / "cni"
    plugins.mkdir()
    for name in ("bridge", "host-local", "loopback", "firewall"):
        (plugins / name).symlink_to(CNI_DIR / name)
    if broken == "failing":
        (plugins / "portmap").write_text(FAILING_PORTMAP)
        (plugins / "portmap").chmod(0o755)
    settings = replace(net_settings, cni_path=(plugins,))
    network = fresh_network()
    before = network_state(settings.state)
    async with serving(settings) as client:
        await import_busybox(client, busybox_tar, ns_headers)
        assert (await client.post("/networks", json=network)).status_code == 201
        port = free_port()
        await make_container(client, ns_headers, "web", LONG)
        patched = await client.patch(
            "/containers/web", json={"network": {"name": network["name"], "ports": [
                {"host_port": port, "container_port": 80, "host_ip": "127.0.0.1"}]}},
            headers={**ns_headers, "Content-Type": "application/merge-patch+json"})
        assert patched.status_code == 200, patched.text
        failed = problem(await client.post("/tasks", json={"container_id": "web"}, headers=ns_headers), 503)
        if broken == "missing":
            assert f'failed to find plugin "portmap" in path [{plugins}]' in failed["detail"]
        else:
            assert "CNI plugin portmap ADD failed (code 7): refusing on purpose; test plugin" in failed["detail"]
        problem(await client.get("/tasks/web", headers=ns_headers), 404)
        assert network_state(settings.state) == before
        assert leftovers(settings) == {}
        # The bridge ran before portmap failed: its veth, address and masquerade rules went with the undo.
        assert (await client.delete("/containers/web", headers=ns_headers)).status_code == 204
        assert (await client.delete(f"/networks/{network['name']}")).status_code == 204
    assert network["bridge"] not in links()


# --- 7. many create/start/exit cycles leave nothing ------------------------------------------

CYCLES = 50


async def test_create_start_exit_cycles_leave_nothing(
    net: tuple[httpx.AsyncClient, dict[str, str]], ns_headers: dict[str, str], net_settings: Settings
) -> None:
    client, network = net
    port = free_port()
    ports = [{"host_port": port, "container_port": 80, "host_ip": "127.0.0.1"}]
    await networked(client, ns_headers, "cycle", ["true"], network["name"], ports)
    await gone(client, ns_headers, "cycle")
    before = network_state(net_settings.state)  # after one cycle: portmap's fixed chains exist
    for _ in range(CYCLES):
        assert (await client.post("/tasks", json={"container_id": "cycle"}, headers=ns_headers)).status_code == 201
        assert (await client.post("/tasks/cycle/start", headers=ns_headers)).status_code == 200
        assert (await wait_exit(client, ns_headers, "cycle"))["exit_status"] == 0
    await gone(client, ns_headers, "cycle")
    assert network_state(net_settings.state) == before
    assert leftovers(net_settings) == {}


# --- 8. kill -9 of the daemon with port-publishing tasks running ---------------------------------

TASKS_AT_KILL = 10


async def test_kill_9_with_published_tasks_then_restart(
    tmp_path: Path, busybox_tar: Path, ns_headers: dict[str, str]
) -> None:
    require_networking()
    network = fresh_network()
    async with daemon_in(tmp_path) as daemon:
        before = network_state(daemon.state)
        client = await daemon.start()
        await import_busybox(client, busybox_tar, ns_headers)
        assert (await client.post("/networks", json=network)).status_code == 201
        ports: dict[str, int] = {}
        pids: dict[str, int] = {}
        for index in range(TASKS_AT_KILL):
            name = f"web{index}"
            ports[name] = free_port()
            published = [{"host_port": ports[name], "container_port": 80, "host_ip": "127.0.0.1"}]
            pids[name] = (await networked(client, ns_headers, name, httpd(name), network["name"], published))["pid"]
        for name, port in ports.items():
            assert (await page_at(port)).strip() == name
        running = network_state(daemon.state)
        assert len(running["netns"]) == TASKS_AT_KILL and len(running["veths"] - before["veths"]) == TASKS_AT_KILL

        await daemon.stop(signal.SIGKILL)
        ended = [f"web{index}" for index in range(0, TASKS_AT_KILL, 2)]
        survivors = [name for name in ports if name not in ended]
        for name in ended:  # they exit while the daemon is down
            os.kill(pids[name], signal.SIGKILL)
        client = await daemon.start()

        async def ended_gone() -> bool:
            listed = (await client.get("/tasks", headers=ns_headers)).json()["tasks"]
            return sorted(task["id"] for task in listed) == sorted(survivors)

        await wait_for(ended_gone, "the ended tasks are torn down", 20)
        for name in ended:
            await gone(client, ns_headers, name, within=20)
        state = network_state(daemon.state)
        assert len(state["netns"]) == len(survivors)
        assert len(state["ipam"] - before["ipam"]) == len(survivors)
        for name in survivors:
            assert (await page_at(ports[name])).strip() == name
        for name in ended:
            with pytest.raises(httpx.TransportError):
                async with httpx.AsyncClient(timeout=2) as web:
                    await web.get(f"http://127.0.0.1:{ports[name]}/")
        # The re-adopted tasks release everything when they go.
        for name in survivors:
            assert (await client.delete(f"/tasks/{name}", headers=ns_headers)).status_code == 200
        assert await no_tasks(client, ns_headers)
        for name in ports:
            assert (await client.delete(f"/containers/{name}", headers=ns_headers)).status_code == 204
        assert (await client.delete(f"/networks/{network['name']}")).status_code == 204
        assert network_state(daemon.state) == before
        assert network["bridge"] not in links()
        await daemon.stop(signal.SIGTERM)
        assert leftovers(daemon.settings) == {}


# --- 9. kill -9 of the daemon in the middle of a CNI ADD -----------------------------------------

# A portmap that never finishes its ADD (it notes its pid, so the test can end it); DEL is real.
STUCK_PORTMAP = """#!/bin/sh
if [ "$CNI_COMMAND" = ADD ]; then
    echo $$ > "{pid_file}"
    exec sleep 1000
fi
exec {real} "$@"
"""


async def test_kill_9_during_cni_add_is_cleaned_up_at_restart(
    tmp_path: Path, busybox_tar: Path, ns_headers: dict[str, str]
) -> None:
    require_networking()
    plugins, pid_file = tmp_path / "cni", tmp_path / "portmap.pid"
    plugins.mkdir()
    for name in ("bridge", "host-local", "loopback", "firewall"):
        (plugins / name).symlink_to(CNI_DIR / name)
    (plugins / "portmap").write_text(STUCK_PORTMAP.format(pid_file=pid_file, real=CNI_DIR / "portmap"))
    (plugins / "portmap").chmod(0o755)
    network = fresh_network()
    (tmp_path / "daemon").mkdir()
    async with daemon_in(tmp_path / "daemon") as daemon:
        daemon.args = ["--cni-path", str(plugins)]
        before = network_state(daemon.state)
        client = await daemon.start()
        await import_busybox(client, busybox_tar, ns_headers)
        assert (await client.post("/networks", json=network)).status_code == 201
        await make_container(client, ns_headers, "web", LONG)
        patched = await client.patch(
            "/containers/web", json={"network": {"name": network["name"], "ports": [
                {"host_port": free_port(), "container_port": 80, "host_ip": "127.0.0.1"}]}},
            headers={**ns_headers, "Content-Type": "application/merge-patch+json"})
        assert patched.status_code == 200, patched.text
        creating = asyncio.ensure_future(client.post("/tasks", json={"container_id": "web"}, headers=ns_headers))
        try:
            # The bridge plugin has run (a veth, an address, masquerade rules); portmap hangs.
            await wait_for(pid_file.exists, "the stuck portmap runs", 20)
            midway = network_state(daemon.state)
            assert midway["netns"] and midway["ipam"] != before["ipam"] and midway["iptables"] != before["iptables"]
            await daemon.stop(signal.SIGKILL)
        finally:
            creating.cancel()
            with suppress(asyncio.CancelledError, httpx.TransportError):
                await creating
            with suppress(ProcessLookupError, ValueError, OSError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
        client = await daemon.start()
        problem(await client.get("/tasks/web", headers=ns_headers), 404)
        assert network_state(daemon.state) == before
        assert (await client.delete("/containers/web", headers=ns_headers)).status_code == 204
        assert (await client.delete(f"/networks/{network['name']}")).status_code == 204
        assert network["bridge"] not in links()
        await daemon.stop(signal.SIGTERM)
        assert leftovers(daemon.settings) == {}
