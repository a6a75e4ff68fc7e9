"""`make bench-peers`, W9 (issue 18): `cargohold run --rm IMAGE true` as a user waits for it,
beside `ctr run --rm` and `podman run --rm` of the same rootfs.

Each run is one process spawned and timed to its exit (a CLI's start-up is part of what a
user waits for), sequential, after a warm-up of three:
- Cargohold: `cargohold --host unix://SOCK run --rm IMAGE true` against bench/peers.py's
  daemon; the image is the busybox layer Cargohold's other workloads use, made an OCI
  layout by bench/peers.py's `write_oci_archive` and imported (`POST /images/import`), so
  no registry is involved. The CLI attaches to the task (a WebSocket) and deletes the
  container afterwards: create container, create task, attach, start, wait, delete.
- containerd: `ctr run --rm` of the same archive (`ctr images import`), on the private
  containerd bench/peers.py starts (its own instance here, so W9 runs alone with --only).
- Podman: `podman run --rm --network none` of the same layer (`podman import`), on
  bench/podman.py's private paths.
None of the three joins a network (ctr: a new netns with loopback only; Cargohold: no
`-p`, no `--network`). Beside each, what a process of that client costs alone, spawn to exit
with one request: `cargohold ps`, `ctr version`, `podman version`.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from bench.peers import IMAGE, containerd, timed_ctr, write_oci_archive
from bench.podman import CGROUP_PARENT, podman
from bench.podman import IMAGE as PODMAN_IMAGE
from bench.run import ROOT, Daemon, Report, expect, ms, summary

CARGOHOLD = ROOT / ".venv" / "bin" / "cargohold"
WARM_UP = 3


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    """`argv` spawned and waited for, its output discarded: ms; it must exit 0."""
    started = time.perf_counter()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env=env, timeout=120)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.decode().strip()}")
    return ms(seconds)


def sampled(runs: int, one: Callable[[int], float]) -> list[float]:
    """`one(index)` run `runs` times after the warm-up, in sequence: its samples."""
    return [one(index) for index in range(runs + WARM_UP)][WARM_UP:]


async def w9_client(d: Daemon, work: Path, tar: Path, runs: int, report: Report) -> None:
    """W9 on daemon `d`, then on a containerd and a Podman of its own; `tar`: the busybox layer."""
    archive = write_oci_archive(tar, work / "w9-busybox-oci.tar", IMAGE)
    async with d.client() as client:
        await expect(client.post("/images/import", content=archive.read_bytes()), 201)
    host = ["--host", f"unix://{d.socket}"]
    ours = summary(sampled(runs, lambda _: timed([str(CARGOHOLD), *host, "run", "--rm", IMAGE, "true"])))
    alone = summary(sampled(runs, lambda _: timed([str(CARGOHOLD), *host, "ps"])))
    async with d.client() as client:  # --rm left nothing behind
        listed = (await expect(client.get("/containers"), 200)).json()
        if listed["containers"]:
            raise RuntimeError(f"cargohold run --rm left containers: {listed}")
    report.add("W9", "cargohold run --rm IMAGE true (the CLI)", "ms", ours, None,
               f"{runs} sequential runs, spawn to exit; image imported, no registry")
    report.add("W9", "  a cargohold process alone (cargohold ps)", "ms", alone, None,
               "spawn, Typer/httpx import, one request, exit")

    async with containerd(work / "w9-containerd") as c:
        c.ctr("images", "import", "--snapshotter", "overlayfs", str(archive))
        theirs = summary(sampled(runs, lambda index: ms(timed_ctr(
            c, "run", "--rm", *c.run_flags(f"w9-{index}"), IMAGE, f"w9-{index}", "true"))))
        ctr_alone = summary(sampled(runs, lambda _: ms(timed_ctr(c, "version"))))
    report.add("W9", "  containerd: ctr run --rm IMAGE true", "ms", theirs, None, "spawn to exit")
    report.add("W9", "  a ctr process alone (ctr version)", "ms", ctr_alone)

    if shutil.which("podman") is None:
        raise RuntimeError("W9 needs podman: `make bench-peers` installs it (as root)")
    with podman(work / "w9-podman", tar) as handle:
        podman_run = summary(sampled(runs, lambda _: timed(handle.argv(
            "run", "--rm", "--cgroup-parent", f"/{CGROUP_PARENT}", "--network", "none", PODMAN_IMAGE, "true"),
            handle.env)))
        podman_alone = summary(sampled(runs, lambda _: timed(handle.argv("version"), handle.env)))
    report.add("W9", "  podman: run --rm --network none IMAGE true", "ms", podman_run, None, "spawn to exit")
    report.add("W9", "  a podman process alone (podman version)", "ms", podman_alone)
    for peer, figures in (("ctr", theirs), ("podman", podman_run)):
        report.add("W9", f"  cargohold / {peer}: run --rm true, p50", "x", round(ours["p50"] / figures["p50"], 2),
                   None, "below 1: Cargohold is faster")
