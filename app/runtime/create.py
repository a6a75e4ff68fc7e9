"""Task create as explicit steps, each with its undo (containerd's retErr defers).

`TaskService.create` checks the rules, then runs its steps in order on one
`AsyncExitStack`: the task dir, the root filesystem, the bundle, the log, the shim. Each
step reads and adds to a `CreateContext` and returns how to undo what it made (or None);
when a later step fails the undos run in reverse, shielded from the request's
cancellation. A new capability (a network namespace, a terminal) is one more step in the
list `TaskService` is given: it edits `context.config` before the bundle step writes it,
or adds what the shim needs, without editing the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..models import Container
from ..snapshots.mounts import mount_all, unmount_and_remove, unmount_under
from ..snapshots.service import SnapshotService
from .bundle import runtime_id, write_config
from .conmon import NO_STDIO, Conmon, Started, Stdio
from .exits import shielded_thread
from .layout import TaskLayout
from .live import LiveTasks
from .oci import OCIRuntime

Undo = Callable[[], Awaitable[None]]


@dataclass
class CreateContext:
    namespace: str
    container: Container
    runtime: OCIRuntime
    layout: TaskLayout
    # The runtime spec (config.json) as it will be written: steps before the bundle's may edit it.
    config: dict[str, Any]
    started: Started | None = None
    # The init process's stdin and terminal (conmon's -i, -t); the spec's process.terminal agrees.
    stdio: Stdio = NO_STDIO
    # Run once every step has succeeded and the task is recorded.
    on_success: list[Callable[[], None]] = field(default_factory=list)

    @property
    def runtime_id(self) -> str:
        return runtime_id(self.namespace, self.container.id)


class CreateStep(Protocol):
    async def run(self, context: CreateContext) -> Undo | None:
        """Make this step's part of the task; return how to undo it."""


async def run_steps(steps: Sequence[CreateStep], context: CreateContext, undo: AsyncExitStack) -> None:
    """Run `steps` in order, each one's undo pushed on `undo` (the caller pops them all on
    success, or lets them run)."""
    for step in steps:
        undone = await step.run(context)
        if undone is not None:
            undo.push_async_callback(_shielded, undone)


async def _shielded(undo: Undo) -> None:
    """Run `undo` to its end even when the request is cancelled meanwhile, and only then let
    the cancellation go on: create's locks (the task's, which a cgroup removal needs) are
    released after the undo, not while it still runs."""
    undoing = asyncio.ensure_future(undo())
    try:
        await asyncio.shield(undoing)
    except asyncio.CancelledError:
        await asyncio.wait([undoing])
        raise


class TaskDirStep:
    """The task dir; undone by unmounting whatever is below it and removing it."""

    async def run(self, context: CreateContext) -> Undo:
        task_dir = context.layout.dir

        async def undo() -> None:
            await shielded_thread(unmount_and_remove, task_dir)

        return undo


class RootfsStep:
    """The container's snapshot mounted on the bundle's rootfs."""

    def __init__(self, snapshots: SnapshotService) -> None:
        self._snapshots = snapshots

    async def run(self, context: CreateContext) -> Undo:
        container = context.container
        assert container.snapshot_key is not None  # create refuses a container without one
        mounts = await self._snapshots.mounts(context.namespace, container.snapshotter, container.snapshot_key)
        rootfs = context.layout.rootfs
        await asyncio.to_thread(_mount_on, mounts, rootfs)

        async def undo() -> None:
            await asyncio.to_thread(unmount_under, rootfs)

        return undo


class BundleStep:
    """`config.json` next to the rootfs (see `bundle.write_config`)."""

    async def run(self, context: CreateContext) -> Undo:
        await asyncio.to_thread(write_config, context.layout.bundle, context.config)
        config = context.layout.config

        async def undo() -> None:
            config.unlink(missing_ok=True)

        return undo


class LogStep:
    """A new task starts a new log; the last run's stays readable if this one fails."""

    async def run(self, context: CreateContext) -> Undo:
        log_path = context.layout.init.log
        previous = log_path.with_name(log_path.name + ".previous")
        kept = log_path.exists()
        if kept:
            log_path.rename(previous)
            context.on_success.append(lambda: previous.unlink(missing_ok=True))

        async def undo() -> None:
            log_path.unlink(missing_ok=True)
            if kept:
                previous.rename(log_path)

        return undo


class ShimStep:
    """conmon, which runs `<runtime> create`; undone by the runtime's delete (which kills
    what it made) and the removal of the cgroup."""

    def __init__(self, conmon: Conmon, live: LiveTasks) -> None:
        self._conmon = conmon
        self._live = live

    async def run(self, context: CreateContext) -> Undo:
        runtime, rid = context.runtime, context.runtime_id
        namespace, task_id = context.namespace, context.container.id

        async def undo() -> None:
            await runtime.delete(rid)
            await self._live.remove_cgroup(namespace, task_id)

        try:
            async with self._live.cgroup_lock:
                context.started = await self._conmon.create(
                    rid, context.layout.bundle, runtime, context.layout.init, context.stdio
                )
        except BaseException:
            await _shielded(undo)  # outside the cgroup lock, which the undo takes
            raise
        return undo


def _mount_on(mounts: list[Any], rootfs: Path) -> None:
    rootfs.mkdir(parents=True, exist_ok=True)
    mount_all(mounts, rootfs)
