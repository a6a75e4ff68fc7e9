"""`make bench-peers`, W7 and W8: Podman (Debian's package, 4.3) beside Cargohold.

Podman is daemonless: each measurement is a `podman` command, run on private paths:
`--root`, `--runroot`, `--tmpdir` and the CNI network configs under a temporary directory,
overlay storage, `--cgroup-manager cgroupfs` (every container's cgroup under
`/cargohold-podman`), `--events-backend file`, and runc as the runtime (Cargohold's),
with a containers.conf and storage.conf of its own (CONTAINERS_CONF,
CONTAINERS_STORAGE_CONF) so that the host's are not read. The busybox layer Cargohold
imports is imported as an image (`podman import`).

- W7: `podman run --rm --network bench-w7p -p H:80 IMAGE /bin/true` (a CNI bridge network
  of its own, 10.215.8.0/24) alternated with `podman run --rm --network none IMAGE
  /bin/true`: the difference is what networking costs Podman (CNI ADD + DEL, as in W7).
- W8: `podman exec -it CTR sh -c 'stty raw -echo; echo ready; exec cat'` spawned on a
  pseudo-terminal (python's pty), the same keystrokes as bench/attach.py's.

At the end: every container removed, the network removed, the processes naming our
directory stopped by pid, the mounts under it unmounted, its cgroups removed; then the host
is checked for the network's bridge, netns, and iptables rules naming its subnet, bridge,
host port or portmap chains, and it fails loudly if any is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.attach import CAT_BYTES, RAW_CAT, pipe_read, pty_keystrokes, with_p99
from bench.networking import CONTAINER_PORT, WARM_UP, iptables_rules, portmap_chains
from bench.peers import (
    alive,
    cgroup_dirs,
    cgroup_pids,
    mounts_under,
    processes_mentioning,
    remove_cgroups,
    signal_and_wait,
)
from bench.run import Report, ms, summary
from tests.conftest import free_port, links

IMAGE = "cargohold.local/bench/busybox:latest"
NETWORK = "bench-w7p"
SUBNET = "10.215.8.0/24"
CGROUP_PARENT = "cargohold-podman"


@dataclass
class Podman:
    base: Path
    env: dict[str, str]
    version: str = ""
    bridge: str = ""
    chains: set[str] = field(default_factory=set)

    def argv(self, *args: str) -> list[str]:
        return ["podman", "--root", str(self.base / "root"), "--runroot", str(self.base / "runroot"),
                "--tmpdir", str(self.base / "tmp"), "--storage-driver", "overlay", "--cgroup-manager", "cgroupfs",
                "--events-backend", "file", "--runtime", "runc", "--network-config-dir", str(self.base / "cni"),
                *args]

    def env_argv(self, *args: str) -> list[str]:
        """argv() for a child that does not get our environment: its config paths by `env`."""
        return ["env", f"CONTAINERS_CONF={self.env['CONTAINERS_CONF']}",
                f"CONTAINERS_STORAGE_CONF={self.env['CONTAINERS_STORAGE_CONF']}", *self.argv(*args)]

    def run(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(self.argv(*args), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env=self.env, timeout=120)
        if check and done.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout


def containers_conf(base: Path) -> str:
    # Podman gives root's containers nofile 1048576 and nproc 4194304; where its conmon's
    # hard limits are lower (a host that is itself a container), runc's init may not raise
    # them ("error setting rlimits ... operation not permitted"), even to the host's own.
    # runc's default spec's nofile, and as many processes: lowering is always allowed.
    limits = ["nofile=1024:1024", "nproc=1024:1024"]
    return f"""[containers]
default_ulimits = {json.dumps(limits)}

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{base / 'events.log'}"
runtime = "runc"
tmp_dir = "{base / 'tmp'}"

[network]
network_backend = "cni"
cni_plugin_dirs = ["/usr/lib/cni"]
network_config_dir = "{base / 'cni'}"
default_subnet = "10.215.9.0/24"
"""


def storage_conf(base: Path) -> str:
    return f"""[storage]
driver = "overlay"
graphroot = "{base / 'root'}"
runroot = "{base / 'runroot'}"
"""


def netns_names() -> set[str]:
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return {line.split()[0] for line in done.stdout.splitlines() if line.strip()}


@contextmanager
def podman(base: Path, tar: Path) -> Iterator[Podman]:
    """Podman on private paths, the busybox image imported; everything it made removed after."""
    if cgroup_pids(CGROUP_PARENT):
        raise RuntimeError(f"cgroup /{CGROUP_PARENT} has processes in it: an earlier run left them")
    remove_cgroups(CGROUP_PARENT)
    base.mkdir(parents=True)
    (base / "containers.conf").write_text(containers_conf(base))
    (base / "storage.conf").write_text(storage_conf(base))
    env = {**os.environ, "CONTAINERS_CONF": str(base / "containers.conf"),
           "CONTAINERS_STORAGE_CONF": str(base / "storage.conf")}
    handle = Podman(base, env)
    netns_before, links_before = netns_names(), links()
    try:
        handle.version = handle.run("version", "--format", "{{.Client.Version}}").strip()
        handle.run("import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   str(tar), IMAGE)
        handle.run("network", "create", "--subnet", SUBNET, NETWORK)
        inspected = json.loads(handle.run("network", "inspect", NETWORK))
        handle.bridge = inspected[0].get("network_interface", "")
        yield handle
    finally:
        clean_up(handle, netns_before, links_before)


def clean_up(handle: Podman, netns_before: set[str], links_before: set[str]) -> None:
    handle.run("rm", "--all", "--force", "--time", "0", check=False)
    handle.run("network", "rm", "--force", NETWORK, check=False)
    if handle.bridge and handle.bridge in links() and handle.bridge not in links_before:
        # `network rm` deletes the bridge CNI made; not when it failed, or never ran.
        subprocess.run(["ip", "link", "delete", handle.bridge], check=False)
    leftover = processes_mentioning(str(handle.base))  # conmons, `podman exec`s
    if leftover:
        print(f"stopping {len(leftover)} process(es) podman left: {sorted(leftover)}", file=sys.stderr)
        signal_and_wait(leftover, signal.SIGTERM, 10)
        signal_and_wait([pid for pid in leftover if alive(pid)], signal.SIGKILL, 5)
    if strays := cgroup_pids(CGROUP_PARENT):
        signal_and_wait(strays, signal.SIGKILL, 5)
    for point in reversed(mounts_under(handle.base)):
        subprocess.run(["umount", point], capture_output=True, check=False)
    remove_cgroups(CGROUP_PARENT)
    left = [f"netns {name}" for name in sorted(netns_names() - netns_before)]
    left += [f"mount {point}" for point in mounts_under(handle.base)]
    left += [f"cgroup {path}" for path in cgroup_dirs(CGROUP_PARENT)]
    left += [f"process {pid}" for pid in processes_mentioning(str(handle.base))]
    if handle.bridge and handle.bridge in links() and handle.bridge not in links_before:
        left.append(f"bridge {handle.bridge}")
    for line in iptables_rules():
        if SUBNET in line or (handle.bridge and handle.bridge in line) or any(c in line for c in handle.chains):
            left.append(f"iptables: {line}")
    if left:
        raise RuntimeError(f"podman left on the host: {left}")


def timed(handle: Podman, *args: str) -> float:
    started = time.perf_counter()
    handle.run(*args)
    return ms(time.perf_counter() - started)


def w7_podman(handle: Podman, runs: int, report: Report) -> tuple[dict[str, float], dict[str, float]]:
    """(networked, without) summaries, ms; the runs alternated."""
    host_port = free_port()
    common = ["run", "--rm", "--cgroup-parent", f"/{CGROUP_PARENT}"]
    plain, networked = [], []
    for index in range(runs + WARM_UP):
        bare = timed(handle, *common, "--network", "none", IMAGE, "/bin/true")
        net = timed(handle, *common, "--network", NETWORK, "-p", f"{host_port}:{CONTAINER_PORT}", IMAGE, "/bin/true")
        if index >= WARM_UP:
            plain.append(bare)
            networked.append(net)
    # The portmap chains a networked container has, to look for them afterwards.
    handle.run("run", "-d", "--name", "w7p-probe", "--cgroup-parent", f"/{CGROUP_PARENT}", "--network",
               NETWORK, "-p", f"{host_port}:{CONTAINER_PORT}", IMAGE, "sleep", "1000")
    handle.chains |= portmap_chains(iptables_rules(), host_port)
    handle.run("rm", "--force", "--time", "0", "w7p-probe")
    with_net, without = summary(networked), summary(plain)
    report.add("W7", "podman: run --rm --network (bridge) -p H:80 true", "ms", with_net, without,
               f"{runs} runs alternated with `--network none` (the floor column); CNI, {SUBNET}, runc")
    report.add("W7", "  podman: run --rm --network none true", "ms", without)
    report.add("W7", "  podman: cost of networking a container (p50 difference)", "ms",
               round(with_net["p50"] - without["p50"], 2), None,
               f"ratio {with_net['p50'] / without['p50']:.2f}x")
    return with_net, without


def w8_podman(handle: Podman, count: int, size: int, report: Report) -> tuple[dict[str, float], float]:
    """(keystroke summary in ms, MB/s)."""
    handle.run("run", "-d", "--name", "w8p", "--cgroup-parent", f"/{CGROUP_PARENT}", "--network", "none", IMAGE,
               "sleep", "100000")
    try:
        samples = pty_keystrokes(handle.env_argv("exec", "-it", "w8p", "sh", "-c", RAW_CAT), count)
        seconds, got = pipe_read(handle.env_argv("exec", "w8p", "head", "-c", str(size), "/dev/zero"))
        exec_true = summary([timed(handle, "exec", "w8p", "true") for _ in range(5)])
    finally:
        handle.run("rm", "--force", "--time", "0", "w8p")
    keystrokes = with_p99(samples)
    report.add("W8", "podman: keystroke round trip through exec -it", "ms", keystrokes, None,
               f"{count} keys on a pty spawning `podman exec -it` (conmon's attach socket); p99 "
               f"{keystrokes['p99']:.2f}")
    mb_s = got / seconds / 1e6
    report.add("W8", f"podman: cat of {size / 1e6:.0f} MB through exec", "MB/s", round(mb_s, 1), None,
               f"`podman exec CTR head -c` read from a pipe, spawn to EOF: {seconds:.2f} s, {got:,} B, of which "
               f"~{exec_true['p50']:.0f} ms is exec's start-up (`podman exec CTR true`, p50 of 5)")
    return keystrokes, mb_s


def ratio_rows(report: Report, workload: str, pairs: list[tuple[str, float, float]]) -> None:
    for what, ours, theirs in pairs:
        if theirs > 0:
            report.add(workload, f"cargohold / podman: {what}", "x", round(ours / theirs, 2), None,
                       "below 1: Cargohold is faster")


def podman_peers(base: Path, tar: Path, chosen: set[str], runs: int, quick: bool,
                 found: dict[str, dict[str, dict[str, float] | None]], report: Report) -> str:
    """W7 and W8 (those `chosen`) through Podman, with the ratios to Cargohold's rows
    (`found`, as bench/peers.py gathers them: each workload's floor and headline). Podman's
    version."""
    with podman(base, tar) as handle:
        if "W7" in chosen:
            with_net, without = w7_podman(handle, runs, report)
            ours, plain = found.get("W7", {}).get("cargohold"), found.get("W7", {}).get("floor")
            if ours and plain:
                ratio_rows(report, "W7", [
                    ("run to completion on a network, p50", ours["p50"], with_net["p50"]),
                    ("cost of networking, p50 difference", ours["p50"] - plain["p50"],
                     with_net["p50"] - without["p50"]),
                ])
        if "W8" in chosen:
            keystrokes, mb_s = w8_podman(handle, 50 if quick else 200, CAT_BYTES // 10 if quick else CAT_BYTES, report)
            if ours := found.get("W8", {}).get("cargohold"):
                ratio_rows(report, "W8", [("keystroke round trip, p50", ours["p50"], keystrokes["p50"]),
                                          ("keystroke round trip, p99", ours.get("p99", ours["max"]),
                                           keystrokes["p99"])])
            ours_mb_s = next((row["value"] for row in report.rows if row["workload"] == "W8"
                              and row["unit"] == "MB/s" and row["metric"].startswith("cargohold:")), None)
            if isinstance(ours_mb_s, float) and mb_s > 0:
                report.add("W8", "cargohold / podman: cat throughput, MB/s", "x", round(ours_mb_s / mb_s, 2), None,
                           "above 1: Cargohold is faster")
        return handle.version
