"""W8 (issue 16): interactive tasks through attach, against a bare pseudo-terminal and a pipe.

Keystroke round trip: a task with `terminal: true, stdin: true` runs busybox `sh -c 'stty
raw -echo; echo ready; exec cat'` (a raw terminal: the echo is cat's, as an interactive
shell's is its own, not the line discipline's); a WebSocket client (`websockets`, on the
daemon's unix socket, `v5.channel.k8s.io`) sends one byte on channel 0 and waits for it on
channel 1, one keystroke at a time. The floor: the same command on a bare pty (python's
`pty.openpty`), the same bytes written and read on its master.

Throughput: a task without terminal or stdin runs `head -c 100000000 /dev/zero`, read by a
client attached before it starts, from the start request to the status message; the floor
reads the same command's stdout from a plain pipe.
"""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, unix_connect

from bench.run import Daemon, Report, expect, make_container, ms, summary

V5 = "v5.channel.k8s.io"
STDIN, STDOUT, ERROR = 0, 1, 3
RAW_CAT = "stty raw -echo; echo ready; exec cat"
KEYS = b"abcdefghijklmnopqrstuvwxyz"
WARM_UP = 20
CAT_BYTES = 100_000_000


# --- the floors ----------------------------------------------------------------------------------


def keystrokes_through(write: Callable[[bytes], None], read: Callable[[], bytes], count: int) -> list[float]:
    """Once `ready` came: a byte written, the time until it is read back; ms each, after a warm-up."""
    pending = b""
    while b"ready" not in pending:
        pending += read()
    samples = []
    for index in range(count + WARM_UP):
        key = KEYS[index % len(KEYS):][:1]
        started = time.perf_counter()
        write(key)
        got = b""
        while key not in got:
            got += read()
        if index >= WARM_UP:
            samples.append(ms(time.perf_counter() - started))
    return samples


def pty_keystrokes(argv: list[str], count: int) -> list[float]:
    """`argv` on a pty of its own (a new session, the pty its controlling terminal): the
    round trip of `count` keystrokes written on the master. The process is ended by pid."""
    master, slave = pty.openpty()
    process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    try:
        return keystrokes_through(lambda data: _write_all(master, data), lambda: os.read(master, 4096), count)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        os.close(master)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def pipe_read(argv: list[str]) -> tuple[float, int]:
    """`argv`'s stdout read from a plain pipe to EOF: (seconds from spawn, bytes)."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert process.stdout is not None
    fd, total = process.stdout.fileno(), 0
    while chunk := os.read(fd, 1 << 16):
        total += len(chunk)
    process.wait()
    return time.perf_counter() - started, total


# --- through the daemon ----------------------------------------------------------------------------


def connect(d: Daemon, task_id: str) -> Any:
    """A WebSocket to the task's attach endpoint on the daemon's unix socket."""
    return unix_connect(str(d.socket), uri=f"ws://cargohold/tasks/{task_id}/attach", subprotocols=[V5],
                        max_size=None, open_timeout=10)


async def finish(client: httpx.AsyncClient, task_id: str, kill: bool) -> None:
    if kill:
        await expect(client.post(f"/tasks/{task_id}/kill", json={"signal": "SIGKILL"}), 204)
    await expect(client.post(f"/tasks/{task_id}/wait"), 200)
    for _ in range(500):  # the container goes once the task's teardown finished
        response = await client.delete(f"/containers/{task_id}")
        if response.status_code == 204:
            return
        await asyncio.sleep(0.01)
    raise RuntimeError(f"container {task_id} still has a task")


async def attach_keystrokes(d: Daemon, client: httpx.AsyncClient, count: int) -> list[float]:
    task_id = "w8-tty"
    await make_container(client, task_id, ["sh", "-c", RAW_CAT])
    await expect(client.post("/tasks", json={"container_id": task_id, "terminal": True, "stdin": True}), 201)
    try:
        ws: ClientConnection
        async with connect(d, task_id) as ws:
            await expect(client.post(f"/tasks/{task_id}/start"), 200)
            pending = b""

            async def read() -> bytes:
                while True:
                    message = await asyncio.wait_for(ws.recv(), 10)
                    assert isinstance(message, bytes)
                    if message[0] == STDOUT:
                        return message[1:]

            while b"ready" not in pending:
                pending += await read()
            samples = []
            for index in range(count + WARM_UP):
                key = KEYS[index % len(KEYS):][:1]
                started = time.perf_counter()
                await ws.send(bytes((STDIN,)) + key)
                got = b""
                while key not in got:
                    got += await read()
                if index >= WARM_UP:
                    samples.append(ms(time.perf_counter() - started))
    finally:
        await finish(client, task_id, kill=True)
    return samples


async def attach_read(d: Daemon, client: httpx.AsyncClient, size: int) -> tuple[float, int]:
    """(seconds from the start request to the status message, stdout bytes read)."""
    task_id = "w8-cat"
    await make_container(client, task_id, ["head", "-c", str(size), "/dev/zero"])
    await expect(client.post("/tasks", json={"container_id": task_id}), 201)
    total = 0
    try:
        ws: ClientConnection
        async with connect(d, task_id) as ws:
            started = time.perf_counter()
            await expect(client.post(f"/tasks/{task_id}/start"), 200)
            async with asyncio.timeout(300):
                while True:
                    message = await ws.recv()
                    assert isinstance(message, bytes)
                    if message[0] == STDOUT:
                        total += len(message) - 1
                    elif message[0] == ERROR:
                        break
            seconds = time.perf_counter() - started
    finally:
        await finish(client, task_id, kill=False)
    return seconds, total


async def w8_attach(d: Daemon, report: Report, quick: bool = False) -> dict[str, dict[str, float]]:
    """W8 on daemon `d` (busybox imported): returns the keystroke summary (ms, with p99)
    and the throughput (MB/s, as a one-sample summary)."""
    count = 50 if quick else 200
    size = CAT_BYTES // 10 if quick else CAT_BYTES
    floor = with_p99(pty_keystrokes(["sh", "-c", RAW_CAT], count))
    async with d.client() as client:
        keystrokes = with_p99(await attach_keystrokes(d, client, count))
        seconds, got = await attach_read(d, client, size)
    floor_seconds, floor_got = pipe_read(["head", "-c", str(size), "/dev/zero"])
    report.add("W8", "keystroke round trip through attach", "ms", keystrokes, floor,
               f"{count} keys, one at a time; p99 {keystrokes['p99']:.2f} (floor {floor['p99']:.2f}); floor: "
               "the same `stty raw; cat` on a bare pty")
    mb_s, floor_mb_s = got / seconds / 1e6, floor_got / floor_seconds / 1e6
    report.add("W8", f"cat of {size / 1e6:.0f} MB through attach", "MB/s", round(mb_s, 1), round(floor_mb_s, 1),
               f"{seconds:.2f} s, {got:,} B read (of {size:,}); floor: the same `head -c` from a plain pipe, "
               f"{floor_mb_s / mb_s:.1f}x faster")
    return {"keystroke": keystrokes, "throughput": {"p50": mb_s}}


def with_p99(samples: list[float]) -> dict[str, float]:
    """bench/run.py's summary plus p99."""
    ordered = sorted(samples)
    return {**summary(ordered), "p99": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]}
