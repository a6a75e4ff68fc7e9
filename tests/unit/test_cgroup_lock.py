"""A task's cgroup is removed only under the task's lock (app/runtime/live.py): a removal
from anywhere else is refused and removes nothing. Every teardown path (an exit's
handling, a refused create's undo, restart recovery) goes through `remove_cgroup`, so the
runtime tests fail, on their leftover check, if one of them ever loses the lock."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.runtime.cgroups import hierarchies, task_cgroup
from app.runtime.live import LiveTasks

pytestmark = pytest.mark.anyio


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveTasks]:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("making cgroups needs root, and CI runs as root")
        pytest.skip("making cgroups needs root")
    tasks = LiveTasks(tmp_path / "state")
    yield tasks
    for hierarchy in hierarchies():  # whatever a failed test left, deepest first
        parent = hierarchy / tasks.cgroup_parent.lstrip("/")
        for group in sorted(parent.glob("**/"), key=lambda p: len(p.parts), reverse=True):
            group.rmdir()


def make_cgroup(live: LiveTasks, namespace: str, task_id: str) -> list[Path]:
    relative = task_cgroup(live.cgroup_parent, namespace, task_id).lstrip("/")
    made = [hierarchy / relative for hierarchy in hierarchies()]
    for group in made:
        group.mkdir(parents=True)
    return made


async def test_removal_outside_the_task_lock_is_refused(live: LiveTasks) -> None:
    made = make_cgroup(live, "ns", "web")
    with pytest.raises(RuntimeError, match="outside the task's lock"):
        await live.remove_cgroup("ns", "web")
    async with live.lock("ns", "web", "exec-1"):  # an exec process's lock is not the task's
        with pytest.raises(RuntimeError, match="outside the task's lock"):
            await live.remove_cgroup("ns", "web")
    async with live.lock("ns", "other"):  # nor is another task's
        with pytest.raises(RuntimeError, match="outside the task's lock"):
            await live.remove_cgroup("ns", "web")
    assert all(group.is_dir() for group in made)
    assert len(live) == 0  # a refused removal leaves no object behind


async def test_removal_under_the_task_lock_removes_it_and_empty_parents(live: LiveTasks) -> None:
    made = make_cgroup(live, "ns", "web")
    other = make_cgroup(live, "ns", "db")
    async with live.lock("ns", "web"):
        await live.remove_cgroup("ns", "web")
    assert not any(group.exists() for group in made)
    assert all(group.is_dir() for group in other)  # the namespace's dir stays: db is in it
    async with live.lock("ns", "db"):
        await live.remove_cgroup("ns", "db")
    for hierarchy in hierarchies():
        assert not (hierarchy / live.cgroup_parent.lstrip("/")).exists()
    assert len(live) == 0
