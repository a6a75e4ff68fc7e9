"""The Monitor: one asyncio loop that polls every watched task's cgroup each interval
and keeps the latest figures, plus per-task OOM watchers that report kills at once.

It owns its background task (`monitor.poll`) and the OOM eventfds; `close()` cancels
and releases them. File reads happen in a worker thread, all tasks in one batch per
poll, so the event loop is never held by cgroup I/O. A cgroup that vanishes between
polls, or a read that fails, is logged once and skipped; the loop never dies.
OOM kills reach the TaskService through the `on_oom` callback it hands down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .cgroup_stats import (
    CGROUP_ROOT,
    CgroupMode,
    CgroupStats,
    OpenFiles,
    Reader,
    read_file,
    read_oom_kill_count,
    read_v1,
    read_v2,
)
from .oom import OomEventfd

log = logging.getLogger(__name__)

TaskKey = tuple[str, str]  # (namespace, container id)
# After an OOM signal, how often and how long (200 ms) to look for the kill to be counted:
# a look is one small file read on the loop, so every millisecond costs little.
OOM_RECHECKS = 200
OOM_RECHECK_SECONDS = 0.001
OnOom = Callable[[str, str, CgroupStats], Awaitable[None]]


@dataclass
class Figures:
    """The latest reading of one task's cgroup."""

    stats: CgroupStats
    read_at: datetime


@dataclass
class _Watched:
    cgroup: str
    on_oom: OnOom
    oom_reported: int = 0
    oom_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    eventfd: OomEventfd | None = None
    failing: bool = False
    # Used by the poll thread only; closed by it too, after the poll that follows unwatch.
    files: OpenFiles = field(default_factory=OpenFiles)


class Monitor:
    def __init__(
        self,
        mode: CgroupMode,
        interval: float,
        observe_poll: Callable[[float], None] = lambda seconds: None,
        root: Path = CGROUP_ROOT,
    ) -> None:
        self._mode = mode
        self._interval = interval
        self._observe_poll = observe_poll
        self._root = root
        self._watched: dict[TaskKey, _Watched] = {}
        self._latest: dict[TaskKey, Figures] = {}
        self._poller: asyncio.Task[None] | None = None
        self._notifications: set[asyncio.Task[bool]] = set()
        # Polls one at a time: the kept-open files of the cgroups belong to the poll
        # thread, which also closes those of unwatched tasks (queued here) after reading.
        self._poll_lock = asyncio.Lock()
        self._unwatched_files: list[OpenFiles] = []

    def start(self) -> None:
        self._poller = asyncio.get_running_loop().create_task(self._poll_forever(), name="monitor.poll")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        if self._notifications:
            await asyncio.gather(*self._notifications, return_exceptions=True)
        async with self._poll_lock:  # a cancelled poll's thread may still be reading
            for key in list(self._watched):
                self.unwatch(*key)
            self._close_unwatched_files()

    # --- tasks --------------------------------------------------------------------

    def watch(self, namespace: str, container_id: str, cgroup: str, on_oom: OnOom, oom_reported: int = 0) -> None:
        """Start watching a task's cgroup (`/cargohold/<key>/<ns>/<id>`): polls, and OOM
        kills reported through `on_oom` (awaited; at most once per kill). `oom_reported`:
        kills already reported (by an earlier daemon), which are not reported again."""
        watched = _Watched(cgroup=cgroup, on_oom=on_oom, oom_reported=oom_reported)
        self._watched[(namespace, container_id)] = watched
        if not self._mode.uses_v2:
            try:
                watched.eventfd = OomEventfd(
                    self._root / "memory" / cgroup.lstrip("/"), lambda: self._notify(namespace, container_id)
                )
            except OSError as error:
                log.warning("no OOM eventfd for %s/%s (%s); OOM kills are seen at the next poll",
                            namespace, container_id, error)

    def unwatch(self, namespace: str, container_id: str) -> None:
        """Stop watching; the task's figures and eventfd go (its metric series disappear)."""
        watched = self._watched.pop((namespace, container_id), None)
        self._latest.pop((namespace, container_id), None)
        if watched is not None:
            self._unwatched_files.append(watched.files)
            if watched.eventfd is not None:
                watched.eventfd.close()

    def latest(self, namespace: str, container_id: str) -> Figures | None:
        return self._latest.get((namespace, container_id))

    def all_latest(self) -> dict[TaskKey, Figures]:
        return dict(self._latest)

    async def read_now(self, namespace: str, container_id: str) -> Figures | None:
        """A fresh reading of one watched task (kept as its latest), or None."""
        watched = self._watched.get((namespace, container_id))
        if watched is None:
            return None
        stats = await asyncio.to_thread(self._read, watched.cgroup)
        if stats is None or (namespace, container_id) not in self._watched:
            return None
        figures = Figures(stats=stats, read_at=datetime.now(UTC))
        self._latest[(namespace, container_id)] = figures
        return figures

    async def check_oom(self, namespace: str, container_id: str) -> bool:
        """Read the OOM counter now and report a kill not yet reported; whether the task
        was ever OOM-killed. Called before an exit is recorded, so /tasks/oom comes first."""
        watched = self._watched.get((namespace, container_id))
        if watched is None:
            return False
        # One small file, read on the loop (cheaper than a thread hop); the full reading,
        # which the /tasks/oom event carries, only when there is a kill to report.
        count = read_oom_kill_count(watched.cgroup, self._mode, self._root)
        if count is not None and count > watched.oom_reported:
            stats = await asyncio.to_thread(self._read, watched.cgroup)
            if stats is not None:
                await self._report_oom(namespace, container_id, watched, stats)
        return watched.oom_reported > 0

    async def _check_oom_after_signal(self, namespace: str, container_id: str) -> bool:
        """The v1 eventfd fires when the cgroup hits OOM, a moment before the kernel counts
        the kill (and also when the cgroup is removed): look again briefly until it shows."""
        for _ in range(OOM_RECHECKS):
            watched = self._watched.get((namespace, container_id))
            if watched is None:
                return False
            before = watched.oom_reported
            await self.check_oom(namespace, container_id)
            if watched.oom_reported > before:
                return True
            await asyncio.sleep(OOM_RECHECK_SECONDS)
        return False

    # --- internals ------------------------------------------------------------------

    def _read(self, cgroup: str, read: Reader = read_file) -> CgroupStats | None:
        return (read_v2 if self._mode.uses_v2 else read_v1)(cgroup, self._root, read)

    def _notify(self, namespace: str, container_id: str) -> None:
        notification = asyncio.get_running_loop().create_task(
            self._check_oom_after_signal(namespace, container_id), name="monitor.oom"
        )
        self._notifications.add(notification)
        notification.add_done_callback(self._notifications.discard)

    async def _report_oom(self, namespace: str, container_id: str, watched: _Watched, stats: CgroupStats) -> None:
        if (stats.oom_kill_count or 0) <= watched.oom_reported:
            return  # the common case, checked without the lock
        async with watched.oom_lock:
            count = stats.oom_kill_count or 0
            if count > watched.oom_reported:
                watched.oom_reported = count
                await watched.on_oom(namespace, container_id, stats)

    async def _poll_forever(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.poll_once()
            except Exception:
                log.exception("monitor poll failed; trying again next interval")
            self._observe_poll(time.monotonic() - started)
            await asyncio.sleep(max(0.0, self._interval - (time.monotonic() - started)))

    async def poll_once(self) -> None:
        """Read every watched cgroup (in one worker thread) and keep the figures."""
        if not self._watched and not self._unwatched_files:
            return
        async with self._poll_lock:
            watched = dict(self._watched)
            reading = asyncio.ensure_future(asyncio.to_thread(self._read_all, watched))
            try:
                readings = await asyncio.shield(reading)
            except asyncio.CancelledError:
                await asyncio.wait([reading])  # its thread goes on: hold the lock until it is done
                raise
        now = datetime.now(UTC)
        for key, stats in readings.items():
            entry = watched[key]
            if key not in self._watched:
                continue  # unwatched while we were reading
            if stats is None:
                if not entry.failing:
                    log.info("cgroup of %s/%s is gone; skipping it until it is unwatched", *key)
                    entry.failing = True
                continue
            entry.failing = False
            self._latest[key] = Figures(stats=stats, read_at=now)
            # Also with an eventfd: it can fire before the kernel counts the kill, and then
            # the poll is what catches it.
            await self._report_oom(key[0], key[1], entry, stats)

    def _read_all(self, watched: dict[TaskKey, _Watched]) -> dict[TaskKey, CgroupStats | None]:
        readings: dict[TaskKey, CgroupStats | None] = {}
        for key, entry in watched.items():
            try:
                readings[key] = self._read(entry.cgroup, entry.files.read)
            except Exception:  # one bad cgroup must not cost the others their figures
                log.exception("reading the cgroup of %s/%s failed", *key)
                readings[key] = None
        # Last: a task unwatched while this ran may have been read (and its files reopened).
        self._close_unwatched_files()
        return readings

    def _close_unwatched_files(self) -> None:
        while self._unwatched_files:
            self._unwatched_files.pop().close()
