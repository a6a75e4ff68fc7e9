"""What the snapshot tests share: layer tars built member by member (whiteouts and opaque
markers included), the problem+json assertion, and `disk_state()` (data dirs, rows,
mounts and the newest event: what a refused import must leave as it was). Not a test
module: test modules import it, never each other."""

from __future__ import annotations

import gzip
import io
import posixpath
import sqlite3
import tarfile
from dataclasses import dataclass
from typing import Any

import httpx

from app.config import Settings
from app.snapshots.mounts import mount_points_under
from tests.rootfs import tar_entry

ALL_SNAPSHOTTERS = ("overlayfs", "native")


PROBLEM_JSON = "application/problem+json"


Json = dict[str, Any]


Member = tuple[tarfile.TarInfo, bytes | None]


def reg(name: str, data: bytes = b"", mode: int = 0o644) -> Member:
    return tar_entry(name, tarfile.REGTYPE, mode, size=len(data)), data


def dir_(name: str, mode: int = 0o755) -> Member:
    return tar_entry(name, tarfile.DIRTYPE, mode), None


def sym(name: str, target: str) -> Member:
    return tar_entry(name, tarfile.SYMTYPE, 0o777, linkname=target), None


def link(name: str, target: str) -> Member:
    return tar_entry(name, tarfile.LNKTYPE, 0o644, linkname=target), None


def whiteout(path: str) -> Member:
    """The OCI whiteout hiding `path` of the lower layers."""
    directory, base = posixpath.split(path)
    return reg(posixpath.join(directory, f".wh.{base}"))


def opaque(directory: str) -> Member:
    """The OCI marker hiding what lower layers hold in `directory`."""
    return reg(f"{directory}/.wh..wh..opq")


def make_tar(*members: Member, gzipped: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(buffer.getvalue()) if gzipped else buffer.getvalue()


def assert_problem(response: httpx.Response, status: int, *words: str) -> Json:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    problem: Json = response.json()
    assert problem["status"] == status
    assert problem["title"]
    assert problem["type"]
    assert isinstance(problem["detail"], str) and problem["detail"]
    for word in words:
        assert word in problem["detail"], problem["detail"]
    return problem


@dataclass(frozen=True)
class Disk:
    """Data dirs on disk and rows in the store (every namespace) per snapshotter, mounts
    under the daemon's root, and the newest event id."""

    dirs: dict[str, frozenset[str]]
    rows: dict[str, frozenset[str]]
    mounts: frozenset[str]
    last_event: int


def query(settings: Settings, sql: str, *args: str) -> list[tuple[Any, ...]]:
    if not settings.database_path.exists():
        return []
    with sqlite3.connect(f"file:{settings.database_path}?mode=ro", uri=True) as connection:
        return connection.execute(sql, args).fetchall()


def disk_state(settings: Settings) -> Disk:
    def dirs(snapshotter: str) -> frozenset[str]:
        base = settings.root / "snapshots" / snapshotter
        return frozenset(entry.name for entry in base.iterdir()) if base.is_dir() else frozenset()

    def rows(snapshotter: str) -> frozenset[str]:
        return frozenset(row[0] for row in query(settings, "SELECT dir FROM snapshots WHERE snapshotter = ?",
                                                  snapshotter))

    newest = query(settings, "SELECT max(id) FROM events")
    return Disk(
        dirs={name: dirs(name) for name in ALL_SNAPSHOTTERS},
        rows={name: rows(name) for name in ALL_SNAPSHOTTERS},
        mounts=frozenset(map(str, mount_points_under(settings.root))) if settings.root.exists() else frozenset(),
        last_event=int(newest[0][0] or 0) if newest else 0,
    )


