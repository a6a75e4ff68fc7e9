"""W7 (issue 15): what networking a task costs. W1 (run to completion through the API) on
a network of the bench's own with one published port, alternated run by run with W1
without a network, on the same daemon: the difference is CNI ADD (in task create) and
CNI DEL (in the teardown `wait` answers after), the ratio the price of a published port.

Under it, as W1's "runtime path alone": the daemon's NetworkService in the bench process
attaching and releasing a task (no HTTP, no runc), and under that the CNI plugins alone
(the chains that service builds, each plugin's exec timed, on a netns of their own).

The bench networks (`bench-w7`, 10.215.7.0/24, bridge `chb-w7`; `bench-w7s`,
10.215.17.0/24, `chb-w7s`, for the service alone) are deleted at the end; then the harness
checks the host for what a task of them could leave behind: the bridges, the host-side
veths the tasks had, iptables rules naming the subnets, bridges, host port or the portmap
chains the tasks had, the IPAM files; and fails if anything is there.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from app.network.cni import Chain, Invocation
from bench.run import Daemon, Report, expect, ms, spec, summary
from tests.conftest import free_port, links

NETWORK = "bench-w7"
SUBNET = "10.215.7.0/24"
BRIDGE = "chb-w7"
CONTAINER_PORT = 80
WARM_UP = 3


def bridge_ports(bridge: str) -> set[str]:
    done = subprocess.run(["ip", "-o", "link", "show", "master", bridge], capture_output=True, text=True)
    return {line.split(": ")[1].split("@")[0] for line in done.stdout.splitlines() if ": " in line}


def iptables_rules() -> list[str]:
    done = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True)
    return [line for line in done.stdout.splitlines() if line and not line.startswith("#")]


def portmap_chains(rules: list[str], host_port: int) -> set[str]:
    """The chains portmap made for `host_port` (CNI-DN-<hash>, named after the CNI container id)."""
    chains = set()
    for line in rules:
        if re.search(rf"--dports? {host_port}\b", line) and (found := re.search(r"-j (CNI-DN-\w+)", line)):
            chains.add(found.group(1))
    return chains


def w7_requests(name: str, host_port: int | None) -> list[tuple[str, str, str, dict[str, Any] | None, int]]:
    """W1's requests (bench/run.py w1_requests), the container on the bench network when
    `host_port` is given."""
    container: dict[str, Any] = {"id": name, "snapshot_key": name, "spec": spec(["/bin/true"])}
    if host_port is not None:
        container["network"] = {"name": NETWORK,
                                "ports": [{"host_port": host_port, "container_port": CONTAINER_PORT}]}
    return [
        ("prepare+container", "POST", "/snapshots", {"key": name, "parent": "busybox"}, 201),
        ("prepare+container", "POST", "/containers", container, 201),
        ("task create", "POST", "/tasks", {"container_id": name}, 201),
        ("start", "POST", f"/tasks/{name}/start", None, 200),
        ("wait", "POST", f"/tasks/{name}/wait", None, 200),
        ("delete", "DELETE", f"/containers/{name}", None, 204),
    ]


async def one_run(client: httpx.AsyncClient, name: str, host_port: int | None,
                  seen: dict[str, set[str]] | None = None) -> dict[str, float]:
    """One W1 run: ms per phase. `seen`: note the task's host veth and portmap chains
    (between requests, outside the timings)."""
    spent: dict[str, float] = {}
    for phase, method, path, body, status in w7_requests(name, host_port):
        started = time.perf_counter()
        await expect(client.request(method, path, json=body), status)
        spent[phase] = spent.get(phase, 0.0) + ms(time.perf_counter() - started)
        if seen is not None and host_port is not None and phase == "task create":
            seen["veths"] |= bridge_ports(BRIDGE)
            seen["chains"] |= portmap_chains(iptables_rules(), host_port)
    return spent


def leftovers(before_links: set[str], seen: dict[str, set[str]], host_port: int, ipam: Path) -> list[str]:
    """What the bench network's tasks left on the host, described; empty when nothing."""
    found = []
    now = links()
    if BRIDGE in now:
        found.append(f"bridge {BRIDGE}")
    found += [f"veth {veth}" for veth in sorted(seen["veths"] & now) if veth not in before_links]
    for line in iptables_rules():
        if (SUBNET in line or BRIDGE in line or re.search(rf"--dports? {host_port}\b", line)
                or any(chain in line for chain in seen["chains"])):
            found.append(f"iptables: {line}")
    if ipam.exists() and any(ipam.iterdir()):
        found.append(f"IPAM files in {ipam}")
    return found


class TimedChain(Chain):
    """The daemon's CNI client, each plugin's exec timed: ms by "<type> <command>"."""

    def __init__(self, chain: Chain, cni_path: Sequence[Path], times: dict[str, list[float]]) -> None:
        super().__init__(chain.name, chain.plugins, cni_path)
        self.times = times

    async def _run(self, plugin: dict[str, Any], command: str, where: Invocation,
                   previous: dict[str, Any] | None) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            return await super()._run(plugin, command, where, previous)
        finally:
            self.times.setdefault(f"{plugin['type']} {command}", []).append(ms(time.perf_counter() - started))


async def network_path(work: Path, runs: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """The network step with no daemon around it (as W1's "runtime path alone"), `runs`
    times after a warm-up, on a network of its own, ms each:
    - the daemon's NetworkService in this process attaching a task and releasing it
      (attach: netns, CNI ADD of the chain and of loopback, the rows, /etc files;
      release: CNI DEL of both, the netns, the rows);
    - under it, the CNI plugins alone: the same chains the service builds, run by its CNI
      client on a netns made and removed by its netns module, each plugin timed.
    """
    from app.config import Settings
    from app.daemon import open_daemon
    from app.models import ContainerNetwork, NetworkCreate, PortMapping
    from app.network import netns
    from app.network.service import CONTAINER_IFNAME

    network, bridge, subnet = "bench-w7s", "chb-w7s", "10.215.17.0/24"
    settings = Settings(root=work / "root", state=work / "state")
    spec = ContainerNetwork(name=network, ports=[PortMapping(host_port=free_port(), container_port=CONTAINER_PORT)])
    service: dict[str, list[float]] = {"attach": [], "release": []}
    plugins: dict[str, list[float]] = {}
    async with open_daemon(settings) as inproc:
        made = await inproc.networks.create(NetworkCreate(name=network, subnet=subnet, bridge=bridge))
        try:
            for index in range(runs + WARM_UP):
                etc = work / "etc" / str(index)
                etc.mkdir(parents=True)
                t0 = time.perf_counter()
                await inproc.networks.attach("default", f"w7s-{index}", spec, "w7s", etc)
                t1 = time.perf_counter()
                await inproc.networks.release("default", f"w7s-{index}")
                t2 = time.perf_counter()
                if index >= WARM_UP:
                    service["attach"].append(ms(t1 - t0))
                    service["release"].append(ms(t2 - t1))
            for index in range(runs + WARM_UP):
                times: dict[str, list[float]] = {}
                chain = TimedChain(inproc.networks._chain(made, spec.ports), settings.cni_path, times)
                loopback = TimedChain(inproc.networks._loopback(), settings.cni_path, times)
                path = work / "netns" / f"floor{index}"
                where = Invocation(f"w7floor-{index}-{os.getpid()}", str(path), CONTAINER_IFNAME)
                t0 = time.perf_counter()
                await netns.create(path)
                times["netns create"] = [ms(time.perf_counter() - t0)]
                result: dict[str, Any] | None = None
                try:
                    result = await chain.add(where)
                    await loopback.add(Invocation(where.container_id, str(path), "lo"))
                finally:
                    failed = await chain.delete(where, result)
                    failed += await loopback.delete(Invocation(where.container_id, str(path), "lo"), None)
                    t0 = time.perf_counter()
                    netns.remove(path)
                    times["netns remove"] = [ms(time.perf_counter() - t0)]
                if failed:
                    raise RuntimeError(f"CNI DEL failed: {[error.describe() for error in failed]}")
                if index >= WARM_UP:
                    for step, spent in times.items():
                        plugins.setdefault(step, []).append(sum(spent))
        finally:
            await inproc.networks.delete(network)
    left = [f"bridge {bridge}"] if bridge in links() else []
    left += [f"iptables: {line}" for line in iptables_rules() if subnet in line or bridge in line]
    left += [f"netns {path}" for path in (work / "netns").glob("*")]
    if left:
        raise RuntimeError(f"W7's network step alone left on the host: {left}")
    return service, plugins


async def w7_networking(d: Daemon, runs: int, report: Report) -> dict[str, float]:
    """W7 on daemon `d` (busybox imported): returns the networked runs' summary (ms)."""
    host_port = free_port()
    before_links = links()
    seen: dict[str, set[str]] = {"veths": set(), "chains": set()}
    plain: dict[str, list[float]] = {}
    networked: dict[str, list[float]] = {}
    async with d.client() as client:
        await expect(client.post("/networks", json={"name": NETWORK, "subnet": SUBNET, "bridge": BRIDGE}), 201)
        try:
            for index in range(runs + WARM_UP):
                # Alternated, so that the machine's drift falls on both alike.
                bare = await one_run(client, f"w7-{index}", None)
                net = await one_run(client, f"w7n-{index}", host_port, seen if index < WARM_UP else None)
                if index >= WARM_UP:
                    for phases, spent in ((plain, bare), (networked, net)):
                        for phase, value in spent.items():
                            phases.setdefault(phase, []).append(value)
        finally:
            await expect(client.delete(f"/networks/{NETWORK}"), 204)
    left = leftovers(before_links, seen, host_port, d.state / "networks" / "ipam" / NETWORK)
    if left:
        raise RuntimeError(f"W7 left on the host: {left}")
    plain_totals = [sum(run) for run in zip(*plain.values(), strict=True)]
    net_totals = [sum(run) for run in zip(*networked.values(), strict=True)]
    with_net, without = summary(net_totals), summary(plain_totals)
    report.add("W7", "run to completion on a network, 1 published port", "ms", with_net, without,
               f"{runs} runs alternated with W1 without a network (the floor column); {SUBNET}")
    for phase, samples in networked.items():
        report.add("W7", f"  phase: {phase}", "ms", summary(samples), summary(plain[phase]),
                   {"task create": "CNI ADD (bridge, host-local, portmap, firewall) and the netns",
                    "wait": "the teardown before wait answers: CNI DEL, the netns unmounted"}.get(phase, ""))
    report.add("W7", "W1 without a network, same runs", "ms", without, None, "alternated with the rows above")
    report.add("W7", "cost of networking a task (p50 difference)", "ms", round(with_net["p50"] - without["p50"], 2),
               None, f"ratio {with_net['p50'] / without['p50']:.2f}x; ADD in create "
               f"{summary(networked['task create'])['p50'] - summary(plain['task create'])['p50']:.1f} ms, "
               f"DEL before wait answers {summary(networked['wait'])['p50'] - summary(plain['wait'])['p50']:.1f} ms")
    service, plugins = await network_path(d.state.parent / "w7-network-path", runs)
    report.add("W7", "network step alone (no HTTP, no runc): attach + release", "ms",
               summary([a + r for a, r in zip(service["attach"], service["release"], strict=True)]), None,
               f"the daemon's NetworkService in the bench process; W7's p50 difference: "
               f"{with_net['p50'] - without['p50']:.1f}")
    for step in ("attach", "release"):
        report.add("W7", f"  {step}", "ms", summary(service[step]))
    report.add("W7", "CNI plugins alone: netns, ADD + DEL of the chain and loopback", "ms",
               summary([sum(run) for run in zip(*plugins.values(), strict=True)]), None,
               "the service's chains and netns module, no rows; each plugin's exec timed below")
    for step, samples in plugins.items():
        report.add("W7", f"  {step}", "ms", summary(samples))
    report.add("W7", "left on the host after the networks went", "items", 0, None,
               f"checked: bridges, the {len(seen['veths'])} veths and {len(seen['chains'])} portmap chains seen "
               "(warm-up runs), iptables, IPAM, netns")
    return with_net
