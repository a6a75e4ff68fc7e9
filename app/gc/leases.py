"""Leases: what an operation in progress (a pull, an import, an unpack) protects from GC.

A pull writes blobs and chain snapshots before the image that reaches them exists; a
collection running meanwhile would see them unreached and take them. The operation holds
them in a lease instead, as containerd's leases do, and drops the lease when the image is
written (or the operation fails). Leases live in memory only: they die with the operation
or with the daemon, so after a crash the start-up collection reclaims what an interrupted
pull left.

Holding is done under the collector's lock: `hold_*` waits for a collection in progress to
finish, so an operation that holds a thing and then checks it exists can never see it
vanish between the two (containerd's "parent snapshot does not exist" race). The collector
reads what is held (`held()`) before it reads its roots, under the same lock.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from ..store.snapshots import SnapshotAddress


@dataclass
class Lease:
    """The content digests and snapshots one operation protects."""

    id: str
    leases: Leases
    content: set[str] = field(default_factory=set)
    snapshots: set[SnapshotAddress] = field(default_factory=set)

    async def hold_content(self, *digests: str) -> None:
        """Protect blobs (present or about to be written) until the lease ends."""
        async with self.leases.lock:
            self.content.update(digests)

    async def hold_snapshot(self, namespace: str, snapshotter: str, key: str) -> None:
        """Protect a snapshot (present or about to be made) until the lease ends."""
        async with self.leases.lock:
            self.snapshots.add((namespace, snapshotter, key))


@dataclass(frozen=True)
class Held:
    """Everything the live leases protect, at one moment."""

    content: frozenset[str]
    snapshots: frozenset[SnapshotAddress]


class Leases:
    """The live leases, and the lock a collection runs under."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self._live: dict[str, Lease] = {}
        self._ids = itertools.count(1)

    @asynccontextmanager
    async def lease(self, what: str) -> AsyncIterator[Lease]:
        """A lease for the duration of the block; `what` names the operation (logs, /info)."""
        lease = Lease(f"{what}-{next(self._ids)}", self)
        self._live[lease.id] = lease
        try:
            yield lease
        finally:
            del self._live[lease.id]

    def held(self) -> Held:
        """What the live leases hold now (the collector calls this under `lock`)."""
        return Held(
            content=frozenset(itertools.chain.from_iterable(lease.content for lease in self._live.values())),
            snapshots=frozenset(itertools.chain.from_iterable(lease.snapshots for lease in self._live.values())),
        )

    def __len__(self) -> int:
        return len(self._live)
