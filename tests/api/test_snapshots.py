"""Snapshots over HTTP: import (plain, gzip, streamed, layered with whiteouts), prepare,
view, commit, mounts, usage, list, get, remove; containers pinning snapshots; and every
refusal leaving nothing behind (no data dir, no mount, no row, no event).

Both snapshotters are exercised (`?snapshotter=overlayfs|native`); where a rule does not
depend on the snapshotter, one is enough. Mount-using tests mount what
`/snapshots/{key}/mounts` returns on a dir of their own, with `app.snapshots.mounts`, and
always unmount it (try/finally). Hostile tars aim at a sentinel directory of the test's
own (`outside`), never at a real host path.

One in-process daemon serves the module (see `daemon`); each test has its own namespace
and compares data dirs, rows, mounts and events with what it found when it started.
"""

from __future__ import annotations

import asyncio
import errno
import gzip
import io
import os
import stat
import tarfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from app.config import Settings
from app.main import create_app
from app.models import Mount
from app.snapshots.mounts import mount_all, mount_points_under, unmount
from tests.api.snapshots import (
    ALL_SNAPSHOTTERS,
    Disk,
    Json,
    Member,
    assert_problem,
    dir_,
    disk_state,
    link,
    make_tar,
    opaque,
    query,
    reg,
    sym,
    whiteout,
)
from tests.conftest import BASE_URL, container_body
from tests.rootfs import busybox_path, write_busybox_tar

pytestmark = pytest.mark.anyio

SNAPSHOTTERS = [pytest.param("overlayfs", id="overlayfs"), pytest.param("native", id="native")]
# The snapshotter used where the rule under test does not depend on it.
DEFAULT = "overlayfs"
# Imports answer in well under a second here; past this they are taken to hang.
IMPORT_TIMEOUT = 10.0
BROKEN_IMPORT_TIMEOUT = 2.0
SECRET = b"host data that no tar may touch\n"
HOST_TIME = 1_000_000_000  # the host file's and directory's times: a tar setting its own would show


# --- tar building ------------------------------------------------------------------


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    """`data` as a streamed request body, `size` bytes a chunk."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


# --- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_busybox_tar(tmp_path_factory.mktemp("rootfs") / "busybox.tar").read_bytes()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host directory outside the daemon's root that a hostile tar aims at."""
    directory = tmp_path / "outside"
    directory.mkdir()
    directory.chmod(0o755)
    (directory / "secret").write_bytes(SECRET)
    (directory / "secret").chmod(0o644)
    os.utime(directory / "secret", (HOST_TIME, HOST_TIME))
    os.utime(directory, (HOST_TIME, HOST_TIME))
    return directory


def assert_outside_untouched(outside: Path) -> None:
    assert sorted(os.listdir(outside)) == ["secret"], "a tar wrote to or deleted from a host directory"
    secret, directory = os.lstat(outside / "secret"), os.lstat(outside)
    assert (outside / "secret").read_bytes() == SECRET
    assert secret.st_nlink == 1, "a tar hard-linked a host file into a snapshot"
    assert (stat.S_IMODE(secret.st_mode), secret.st_uid, secret.st_gid) == (0o644, 0, 0), "a tar changed a host file"
    assert secret.st_mtime == HOST_TIME, "a tar changed a host file's times"
    assert (stat.S_IMODE(directory.st_mode), directory.st_uid) == (0o755, 0), "a tar changed a host directory"
    assert directory.st_mtime == HOST_TIME, "a tar changed a host directory's times"


@pytest.fixture(autouse=True)
def no_stray_mounts(tmp_path: Path) -> Iterator[None]:
    """Safety net: whatever a test mounted below tmp_path is unmounted, and the test fails."""
    yield
    stray = [str(p) for p in mount_points_under(tmp_path)]
    for point in sorted(stray, key=len, reverse=True):
        unmount(Path(point))
    assert not stray, f"mounts left behind: {stray}"


@contextmanager
def mounted(mounts: list[Json], target: Path) -> Iterator[Path]:
    """Mount what /snapshots/{key}/mounts returned on `target`; unmount on the way out."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        mount_all([Mount.model_validate(mount) for mount in mounts], target)
        yield target
    finally:
        unmount(target)


# --- the daemon and the state it must leave consistent ---------------------------------
#
# One daemon serves the whole module (a daemon per test costs more than most tests); each
# test works in a namespace of its own and checks the data dirs, rows and mounts it added
# or removed against what was there when it started, so one test's leftovers cannot fail
# the next.


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """As conftest's `in_process_client`, but an unhandled error in the app is the 500 a
    client would get (raise_app_exceptions=False), so a test can say what it expected."""
    app = create_app(settings)
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        transport = httpx.ASGITransport(app=with_state, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            yield client


@pytest.fixture(scope="module")
async def daemon(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    base = tmp_path_factory.mktemp("daemon")
    settings = Settings(root=base / "root", state=base / "state", listeners=())
    async with serving(settings) as client:
        yield client, settings


@dataclass
class Api:
    client: httpx.AsyncClient
    headers: dict[str, str]
    settings: Settings
    baseline: Disk  # as the test found it

    async def import_tar(
        self,
        name: str,
        body: bytes | AsyncIterator[bytes],
        snapshotter: str,
        parent: str | None = None,
        within: float = IMPORT_TIMEOUT,
    ) -> httpx.Response:
        params = {"name": name, "snapshotter": snapshotter}
        if parent is not None:
            params["parent"] = parent
        try:
            async with asyncio.timeout(within):  # cancelling the request unblocks the import
                return await self.client.post("/snapshots/import", params=params, content=body, headers=self.headers)
        except TimeoutError:
            pytest.fail(f"POST /snapshots/import?name={name} did not answer within {within} s: it hangs")

    async def imported(
        self, name: str, body: bytes | AsyncIterator[bytes], snapshotter: str, parent: str | None = None
    ) -> Json:
        response = await self.import_tar(name, body, snapshotter, parent)
        assert response.status_code == 201, response.text
        result: Json = response.json()
        return result

    async def prepare(
        self, key: str, snapshotter: str, parent: str | None = None, kind: str = "active", **extra: Any
    ) -> httpx.Response:
        body: Json = {"key": key, "kind": kind, **extra}
        if parent is not None:
            body["parent"] = parent
        return await self.client.post(
            "/snapshots", json=body, params={"snapshotter": snapshotter}, headers=self.headers
        )

    async def prepared(self, key: str, snapshotter: str, parent: str | None = None, kind: str = "active") -> Json:
        response = await self.prepare(key, snapshotter, parent, kind)
        assert response.status_code == 201, response.text
        result: Json = response.json()
        return result

    async def commit(self, key: str, name: str, snapshotter: str, **extra: Any) -> httpx.Response:
        return await self.client.post(
            f"/snapshots/{key}/commit",
            json={"name": name, **extra},
            params={"snapshotter": snapshotter},
            headers=self.headers,
        )

    async def get(self, key: str, snapshotter: str) -> httpx.Response:
        return await self.client.get(f"/snapshots/{key}", params={"snapshotter": snapshotter}, headers=self.headers)

    async def list_snapshots(self, snapshotter: str) -> httpx.Response:
        return await self.client.get("/snapshots", params={"snapshotter": snapshotter}, headers=self.headers)

    async def keys(self, snapshotter: str) -> list[str]:
        response = await self.list_snapshots(snapshotter)
        if response.status_code == 404:  # the namespace does not exist (yet)
            return []
        assert response.status_code == 200, response.text
        return [snapshot["key"] for snapshot in response.json()["snapshots"]]

    async def remove(self, key: str, snapshotter: str) -> httpx.Response:
        return await self.client.delete(f"/snapshots/{key}", params={"snapshotter": snapshotter}, headers=self.headers)

    async def mounts(self, key: str, snapshotter: str) -> list[Json]:
        response = await self.client.get(
            f"/snapshots/{key}/mounts", params={"snapshotter": snapshotter}, headers=self.headers
        )
        assert response.status_code == 200, response.text
        result: list[Json] = response.json()
        return result

    async def usage(self, key: str, snapshotter: str) -> Json:
        response = await self.client.get(
            f"/snapshots/{key}/usage", params={"snapshotter": snapshotter}, headers=self.headers
        )
        assert response.status_code == 200, response.text
        result: Json = response.json()
        return result

    async def create_container(self, container_id: str, snapshotter: str, snapshot_key: str) -> None:
        body = container_body(container_id, snapshotter=snapshotter, snapshot_key=snapshot_key)
        response = await self.client.post("/containers", json=body, headers=self.headers)
        assert response.status_code == 201, response.text

    async def events_after(self, since: int) -> list[Json]:
        found: list[Json] = []
        while True:
            page = await self.client.get("/events/history", params={"since": since, "limit": 1000})
            assert page.status_code == 200, page.text
            events = page.json()["events"]
            if not events:
                return found
            found.extend(events)
            since = events[-1]["id"]

    async def last_event_id(self) -> int:
        return disk_state(self.settings).last_event

    def data_dirs(self, snapshotter: str) -> frozenset[str]:
        return disk_state(self.settings).dirs[snapshotter]

    def namespace_rows(self, snapshotter: str) -> frozenset[str]:
        rows = query(
            self.settings, "SELECT dir FROM snapshots WHERE namespace = ? AND snapshotter = ?",
            self.headers["Cargohold-Namespace"], snapshotter,
        )
        return frozenset(row[0] for row in rows)

    def dir_of(self, key: str, snapshotter: str) -> Path:
        """The data dir the store records for `key` (to check it goes with the snapshot)."""
        rows = query(
            self.settings, "SELECT dir FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
            self.headers["Cargohold-Namespace"], snapshotter, key,
        )
        assert rows, f"no row for snapshot {key}"
        return self.settings.root / "snapshots" / snapshotter / str(rows[0][0])


@pytest.fixture
def api(daemon: tuple[httpx.AsyncClient, Settings], ns_headers: dict[str, str]) -> Api:
    client, settings = daemon
    return Api(client, ns_headers, settings, disk_state(settings))


@dataclass(frozen=True)
class Observed:
    """Everything a refused request must leave as it was."""

    keys: dict[str, list[str]]  # listed in this test's namespace
    namespace_rows: dict[str, frozenset[str]]
    disk: Disk


async def _observed(api: Api) -> Observed:
    return Observed(
        keys={name: await api.keys(name) for name in ALL_SNAPSHOTTERS},
        namespace_rows={name: api.namespace_rows(name) for name in ALL_SNAPSHOTTERS},
        disk=disk_state(api.settings),
    )


def inconsistencies(api: Api, observed: Observed) -> list[str]:
    """Against the state the test started from: a data dir for each snapshot made, none
    left of a snapshot removed, each listed snapshot with its dir, nothing left mounted."""
    found = []
    base, now = api.baseline, observed.disk
    for name in ALL_SNAPSHOTTERS:
        rows = observed.namespace_rows[name]
        if len(observed.keys[name]) != len(rows):
            found.append(f"{name}: listed {observed.keys[name]} but {len(rows)} rows")
        if not rows <= now.dirs[name]:
            found.append(f"{name}: snapshots without a data dir: {sorted(rows - now.dirs[name])}")
        made, recorded = now.dirs[name] - base.dirs[name], now.rows[name] - base.rows[name]
        if made != recorded:
            found.append(f"{name}: data dirs that belong to no snapshot: {sorted(made - recorded)}")
        gone, dropped = base.dirs[name] - now.dirs[name], base.rows[name] - now.rows[name]
        if gone != dropped:
            found.append(f"{name}: data dirs of removed snapshots left behind: {sorted(dropped - gone)}")
    if not now.mounts <= base.mounts:
        found.append(f"left mounted under the root: {sorted(now.mounts - base.mounts)}")
    return found


async def observe(api: Api) -> Observed:
    """The state now, checked consistent."""
    observed = await _observed(api)
    problems = inconsistencies(api, observed)
    assert not problems, problems
    return observed


async def changes_since(api: Api, before: Observed) -> list[str]:
    after = await _observed(api)
    changes = inconsistencies(api, after)
    if after.keys != before.keys:
        changes.append(f"snapshots listed: {before.keys} -> {after.keys}")
    for name in ALL_SNAPSHOTTERS:
        was, now = before.disk.dirs[name], after.disk.dirs[name]
        if now != was:
            changes.append(f"{name} data dirs: added {sorted(now - was)}, removed {sorted(was - now)}")
        if after.disk.rows[name] != before.disk.rows[name]:
            changes.append(f"{name}: rows changed")
    if after.disk.mounts != before.disk.mounts:
        changes.append(f"mounts: {sorted(before.disk.mounts)} -> {sorted(after.disk.mounts)}")
    events = await api.events_after(before.disk.last_event)
    if events:
        changes.append(f"events published: {[event['topic'] for event in events]}")
    return changes


async def assert_refused(api: Api, before: Observed, response: httpx.Response, status: int, *words: str) -> None:
    """`response` is the problem `status`, and the request changed nothing at all."""
    changes = await changes_since(api, before)
    assert response.status_code == status, (
        f"expected {status}, got {response.status_code} {response.text}; the request changed: {changes or 'nothing'}"
    )
    assert_problem(response, status, *words)
    assert not changes, f"a refused request changed: {changes}"


# --- import --------------------------------------------------------------------------


class TestImport:
    @pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
    async def test_busybox_becomes_a_committed_snapshot(
        self, api: Api, snapshotter: str, busybox_tar: bytes
    ) -> None:
        assert len(busybox_tar) > api.settings.max_body_bytes  # import is exempt from the 1 MiB limit
        response = await api.import_tar("busybox", busybox_tar, snapshotter)
        assert response.status_code == 201, response.text
        assert response.headers["location"] == "/snapshots/busybox"
        created = response.json()
        assert created["key"] == "busybox"
        assert created["kind"] == "committed"
        assert created["parent"] is None
        assert created["snapshotter"] == snapshotter
        assert (await api.get("busybox", snapshotter)).json() == created
        assert await api.keys(snapshotter) == ["busybox"]
        events = await api.events_after(api.baseline.last_event)
        commits = [event for event in events if event["topic"] == "/snapshot/commit"]
        assert [event["event"] for event in commits] == [
            {"key": "busybox", "name": "busybox", "parent": None, "snapshotter": snapshotter}
        ]
        usage = await api.usage("busybox", snapshotter)
        assert usage["size"] >= busybox_path().stat().st_size
        with tarfile.open(fileobj=io.BytesIO(busybox_tar)) as archive:
            assert usage["inodes"] == len(archive.getmembers())
        await observe(api)

    @pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
    async def test_gzip_tar_is_unpacked(self, api: Api, snapshotter: str, tmp_path: Path) -> None:
        payload = os.urandom(300_000)
        body = make_tar(dir_("data"), reg("data/blob", payload), sym("data/alias", "blob"), gzipped=True)
        assert body[:2] == b"\x1f\x8b"
        await api.imported("zipped", body, snapshotter)
        await api.prepared("look", snapshotter, parent="zipped", kind="view")
        with mounted(await api.mounts("look", snapshotter), tmp_path / "view") as view:
            assert (view / "data" / "blob").read_bytes() == payload
            assert os.readlink(view / "data" / "alias") == "blob"

    @pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
    async def test_body_streamed_in_chunks(self, api: Api, snapshotter: str, tmp_path: Path) -> None:
        payload = os.urandom(3 * 1024 * 1024 + 17)
        body = make_tar(reg("big", payload, 0o600))
        await api.imported("streamed", chunked(body, 64 * 1024), snapshotter)
        await api.prepared("look", snapshotter, parent="streamed", kind="view")
        with mounted(await api.mounts("look", snapshotter), tmp_path / "view") as view:
            assert (view / "big").read_bytes() == payload
            assert stat.S_IMODE((view / "big").stat().st_mode) == 0o600

    @pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
    async def test_links_inside_the_root_are_kept(self, api: Api, snapshotter: str, tmp_path: Path) -> None:
        body = make_tar(
            dir_("bin"),
            reg("bin/busybox", b"#!fake\n", 0o755),
            sym("bin/sh", "/bin/busybox"),  # absolute: the container's own /bin, kept
            sym("bin/ls", "busybox"),
            dir_("usr"),
            dir_("usr/bin"),
            sym("usr/bin/env", "../../bin/busybox"),
            link("bin/hard", "bin/busybox"),
        )
        await api.imported("links", body, snapshotter)
        await api.prepared("look", snapshotter, parent="links", kind="view")
        with mounted(await api.mounts("look", snapshotter), tmp_path / "view") as view:
            assert os.readlink(view / "bin" / "sh") == "/bin/busybox"
            assert os.readlink(view / "bin" / "ls") == "busybox"
            assert os.readlink(view / "usr" / "bin" / "env") == "../../bin/busybox"
            original, hard = (view / "bin" / "busybox").stat(), (view / "bin" / "hard").stat()
            assert (hard.st_dev, hard.st_ino) == (original.st_dev, original.st_ino)
            assert hard.st_nlink == 2

    @pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
    async def test_whiteout_then_same_name_in_one_layer(self, api: Api, snapshotter: str, tmp_path: Path) -> None:
        """A layer may delete a lower entry and put a new one (of another type) in its place."""
        await api.imported("base", make_tar(dir_("a"), reg("a/old", b"old"), reg("f", b"file")), snapshotter)
        layer = make_tar(whiteout("a"), reg("a", b"now a file"), whiteout("f"), dir_("f"), reg("f/inner", b"x"))
        await api.imported("layer", layer, snapshotter, parent="base")
        await api.prepared("look", snapshotter, parent="layer", kind="view")
        with mounted(await api.mounts("look", snapshotter), tmp_path / "view") as view:
            assert (view / "a").read_bytes() == b"now a file"
            assert sorted(os.listdir(view / "f")) == ["inner"]

    @pytest.mark.parametrize(
        "marker_first", [pytest.param(True, id="marker_first"), pytest.param(False, id="marker_last")]
    )
    @pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
    async def test_opaque_dir_keeps_only_the_layers_entries(
        self, api: Api, snapshotter: str, marker_first: bool, tmp_path: Path
    ) -> None:
        base = make_tar(dir_("d"), reg("d/lower1"), dir_("d/sub"), reg("d/sub/deep"), reg("kept", b"k"))
        await api.imported("base", base, snapshotter)
        own = [reg("d/mine", b"mine"), dir_("d/sub"), reg("d/sub/new")]
        entries = [dir_("d"), opaque("d"), *own] if marker_first else [dir_("d"), *own, opaque("d")]
        await api.imported("layer", make_tar(*entries), snapshotter, parent="base")
        await api.prepared("look", snapshotter, parent="layer", kind="view")
        with mounted(await api.mounts("look", snapshotter), tmp_path / "view") as view:
            assert sorted(os.listdir(view / "d")) == ["mine", "sub"]
            assert sorted(os.listdir(view / "d" / "sub")) == ["new"]
            assert (view / "kept").read_bytes() == b"k"


# --- the two-layer build, mounted -----------------------------------------------------


def busybox_layer() -> bytes:
    """On busybox: add /opt/added.txt, white out /bin/vi, make /etc opaque (only hostname)."""
    return make_tar(
        dir_("opt"),
        reg("opt/added.txt", b"added by the layer\n"),
        whiteout("bin/vi"),
        dir_("etc"),
        reg("etc/hostname", b"layered\n"),
        opaque("etc"),
    )


class TestTwoLayerBuild:
    @pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
    async def test_merged_view_then_writes_grow_usage(
        self, api: Api, snapshotter: str, busybox_tar: bytes, tmp_path: Path
    ) -> None:
        await api.imported("busybox", busybox_tar, snapshotter)
        layer = await api.imported("layer", busybox_layer(), snapshotter, parent="busybox")
        assert layer["parent"] == "busybox"
        assert layer["kind"] == "committed"
        if snapshotter == "overlayfs":  # a layer stores only its own changes
            assert (await api.usage("layer", snapshotter))["size"] < busybox_path().stat().st_size
        active = await api.prepared("work", snapshotter, parent="layer")
        assert active["kind"] == "active"
        before = await api.usage("work", snapshotter)

        written = os.urandom(256 * 1024)
        with mounted(await api.mounts("work", snapshotter), tmp_path / "merged") as root:
            assert (root / "opt" / "added.txt").read_bytes() == b"added by the layer\n"
            assert not os.path.lexists(root / "bin" / "vi")
            assert sorted(os.listdir(root / "etc")) == ["hostname"]
            assert (root / "etc" / "hostname").read_bytes() == b"layered\n"
            assert (root / "bin" / "busybox").stat().st_size == busybox_path().stat().st_size
            assert os.readlink(root / "bin" / "sh") == "busybox"
            assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
            assert stat.S_IMODE((root / "root").stat().st_mode) == 0o700
            (root / "tmp" / "written").write_bytes(written)
            (root / "tmp" / "dir").mkdir()

        after = await api.usage("work", snapshotter)
        assert after["size"] >= before["size"] + len(written)
        assert after["inodes"] >= before["inodes"] + 2
        # The write went to the active snapshot alone.
        await api.prepared("again", snapshotter, parent="layer", kind="view")
        with mounted(await api.mounts("again", snapshotter), tmp_path / "again") as root:
            assert not (root / "tmp" / "written").exists()
        await observe(api)

    @pytest.mark.parametrize(
        "parent", [pytest.param("busybox", id="one_parent"), pytest.param("layer", id="two_parents")]
    )
    @pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
    async def test_view_is_read_only(
        self, api: Api, snapshotter: str, parent: str, busybox_tar: bytes, tmp_path: Path
    ) -> None:
        await api.imported("busybox", busybox_tar, snapshotter)
        await api.imported("layer", busybox_layer(), snapshotter, parent="busybox")
        view = await api.prepared("ro", snapshotter, parent=parent, kind="view")
        assert view["kind"] == "view"
        with mounted(await api.mounts("ro", snapshotter), tmp_path / "ro") as root:
            assert (root / "bin" / "busybox").is_file()
            with pytest.raises(OSError) as writing:
                (root / "tmp" / "nope").write_bytes(b"x")
            assert writing.value.errno == errno.EROFS
            with pytest.raises(OSError) as making:
                (root / "newdir").mkdir()
            assert making.value.errno == errno.EROFS
        await observe(api)


# --- import refusals ---------------------------------------------------------------------

Hostile = Callable[[Path], list[Member]]

# Refused from the names alone, before anything is written: the same for both snapshotters.
LEXICAL_TRAVERSAL: list[Any] = [
    pytest.param(lambda o: [reg("/abs-file", b"x")], id="absolute_path"),
    pytest.param(lambda o: [reg(f"{o}/pwned", b"x")], id="absolute_path_to_host_dir"),
    pytest.param(lambda o: [reg("../escaped", b"x")], id="dotdot"),
    pytest.param(lambda o: [dir_("a"), reg("a/../../escaped", b"x")], id="nested_dotdot"),
    pytest.param(lambda o: [reg("ok", b"fine"), dir_("../up")], id="dotdot_dir_after_good_member"),
    pytest.param(lambda o: [sym("up", "../outside")], id="symlink_climbing_out"),
    pytest.param(lambda o: [dir_("a"), dir_("a/b"), sym("a/b/up", "../../../x")], id="nested_symlink_climbing_out"),
    pytest.param(lambda o: [link("h", str(o / "secret"))], id="hardlink_absolute"),
    pytest.param(lambda o: [link("h", "../outside/secret")], id="hardlink_dotdot"),
]

# Refused only by looking at what is already extracted (links) or at what a whiteout
# names: run on both snapshotters.
LINK_TRAVERSAL: list[Any] = [
    pytest.param(
        lambda o: [dir_("x"), dir_("x/y"), sym("x/y/top", "../.."), sym("x/y/top/esc", "../../..")],
        id="symlink_climbing_out_through_a_symlinked_dir",
    ),
    pytest.param(lambda o: [sym("lnk", str(o)), reg("lnk/pwned", b"x")], id="file_through_absolute_symlink"),
    pytest.param(lambda o: [sym("lnk", str(o)), dir_("lnk/sub")], id="dir_through_absolute_symlink"),
    pytest.param(lambda o: [sym("lnk", str(o)), sym("lnk/s", "x")], id="symlink_through_absolute_symlink"),
    pytest.param(lambda o: [sym("lnk", str(o)), link("h", "lnk/secret")], id="hardlink_through_absolute_symlink"),
    pytest.param(lambda o: [sym("lnk", str(o)), whiteout("lnk/secret")], id="whiteout_through_absolute_symlink"),
    pytest.param(lambda o: [sym("lnk", str(o)), opaque("lnk")], id="opaque_through_absolute_symlink"),
    pytest.param(lambda o: [reg(".wh...")], id="whiteout_of_dotdot"),
]

# Against a parent that holds `lnk -> <outside>` (absolute symlinks are legitimate: think
# /var/run -> /run), a layer must not reach through it either.
THROUGH_PARENT_SYMLINK: list[Any] = [
    pytest.param(lambda o: [reg("lnk/pwned", b"x")], id="file"),
    pytest.param(lambda o: [dir_("lnk/sub")], id="dir"),
    pytest.param(lambda o: [link("h", "lnk/secret")], id="hardlink"),
    pytest.param(lambda o: [whiteout("lnk/secret")], id="whiteout"),
    pytest.param(lambda o: [opaque("lnk")], id="opaque"),
]


class TestImportRefused:
    @pytest.mark.parametrize("hostile", LEXICAL_TRAVERSAL)
    async def test_lexical_traversal_is_400_and_leaves_nothing(
        self, api: Api, hostile: Hostile, outside: Path
    ) -> None:
        await self.refused(api, DEFAULT, hostile, outside)

    @pytest.mark.parametrize("hostile", LINK_TRAVERSAL)
    @pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
    async def test_link_traversal_is_400_and_leaves_nothing(
        self, api: Api, snapshotter: str, hostile: Hostile, outside: Path
    ) -> None:
        await self.refused(api, snapshotter, hostile, outside)

    @staticmethod
    async def refused(api: Api, snapshotter: str, hostile: Hostile, outside: Path) -> None:
        await api.imported("base", make_tar(reg("existing", b"e")), snapshotter)
        before = await observe(api)
        response = await api.import_tar("evil", make_tar(*hostile(outside)), snapshotter)
        assert_outside_untouched(outside)
        await assert_refused(api, before, response, 400)

    @pytest.mark.parametrize("hostile", THROUGH_PARENT_SYMLINK)
    @pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
    async def test_layer_cannot_reach_through_a_parent_symlink(
        self, api: Api, snapshotter: str, hostile: Hostile, outside: Path
    ) -> None:
        await api.imported("base", make_tar(sym("lnk", str(outside)), reg("existing", b"e")), snapshotter)
        before = await observe(api)
        response = await api.import_tar("evil", make_tar(*hostile(outside)), snapshotter, parent="base")
        assert_outside_untouched(outside)
        await assert_refused(api, before, response, 400)

    @pytest.mark.parametrize("in_parent", [pytest.param(False, id="same_tar"), pytest.param(True, id="parent")])
    @pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
    async def test_dir_entry_over_an_absolute_symlink_never_touches_the_host(
        self, api: Api, snapshotter: str, in_parent: bool, outside: Path, tmp_path: Path
    ) -> None:
        """`lnk -> /host/dir` then a dir entry `lnk` (mode 0777): either refused (400) or the
        symlink replaced by a real dir, as containerd does; never a chmod of the host dir."""
        parent: str | None = None
        if in_parent:
            await api.imported("base", make_tar(sym("lnk", str(outside))), snapshotter)
            parent, members = "base", [dir_("lnk", 0o777)]
        else:
            members = [sym("lnk", str(outside)), dir_("lnk", 0o777)]
        before = await observe(api)
        response = await api.import_tar("evil", make_tar(*members), snapshotter, parent=parent)
        assert_outside_untouched(outside)
        if response.status_code == 400:
            await assert_refused(api, before, response, 400)
            return
        assert response.status_code == 201, response.text
        await api.prepared("look", snapshotter, parent="evil", kind="view")
        with mounted(await api.mounts("look", snapshotter), tmp_path / "view") as view:
            assert not (view / "lnk").is_symlink()
            assert stat.S_IMODE((view / "lnk").stat().st_mode) == 0o777

    @pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
    async def test_hardlink_to_an_outside_symlink_never_links_the_host_file(
        self, api: Api, snapshotter: str, outside: Path, tmp_path: Path
    ) -> None:
        """`lnk -> /host/file`, then a hard link `h` to `lnk` of mode 04777 and uid 1234
        (issue 12: link(2) and chown/chmod followed the symlink). Either refused, or `h` is
        anything but the host file (a link to the symlink itself is fine); the host file's
        content, mode, owner and times stay."""
        before = await observe(api)
        hard = link("h", "lnk")
        hard[0].mode, hard[0].uid, hard[0].gid = 0o4777, 1234, 1234
        members = [sym("lnk", str(outside / "secret")), hard]
        response = await api.import_tar("evil", make_tar(*members), snapshotter)
        assert_outside_untouched(outside)
        if response.status_code == 400:
            await assert_refused(api, before, response, 400)
            return
        assert response.status_code == 201, response.text
        await api.prepared("look", snapshotter, parent="evil", kind="view")
        with mounted(await api.mounts("look", snapshotter), tmp_path / "view") as view:
            assert os.path.islink(view / "h") or (view / "h").read_bytes() != SECRET
        await observe(api)


# Three members of 1000 random bytes each: header at 0, data at 512; header at 1536, ...
_SAMPLE = make_tar(*(reg(name, os.urandom(1000)) for name in ("one", "two", "three")))

BROKEN: list[Any] = [
    pytest.param(_SAMPLE[: 512 + 600], id="truncated_in_file_data"),
    pytest.param(_SAMPLE[: 1536 + 100], id="truncated_in_a_header"),
    pytest.param(gzip.compress(_SAMPLE)[:-1500], id="gzip_truncated"),
    pytest.param(b"this is not a tar archive at all" * 40, id="not_a_tar"),
    pytest.param(b"", id="empty_body"),
    pytest.param(make_tar(link("h", "missing")), id="hardlink_to_nothing"),
    pytest.param(make_tar(reg("f", b"file"), reg("f/under-a-file", b"x")), id="member_under_a_file"),
]


class TestImportErrors:
    @pytest.mark.parametrize("body", BROKEN)
    async def test_broken_tar_is_400(self, api: Api, body: bytes) -> None:
        await api.imported("base", make_tar(reg("existing")), DEFAULT)
        before = await observe(api)
        response = await api.import_tar("broken", body, DEFAULT, within=BROKEN_IMPORT_TIMEOUT)
        await assert_refused(api, before, response, 400)

    @pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
    async def test_truncated_busybox_layer_is_400(self, api: Api, snapshotter: str, busybox_tar: bytes) -> None:
        """Cut in the middle of /bin/busybox's data, applied as a layer on a parent."""
        await api.imported("base", make_tar(dir_("bin"), reg("bin/old", b"o")), snapshotter)
        before = await observe(api)
        cut = busybox_tar[: len(busybox_tar) // 2]
        response = await api.import_tar("busybox", cut, snapshotter, parent="base", within=BROKEN_IMPORT_TIMEOUT)
        await assert_refused(api, before, response, 400)

    @pytest.mark.parametrize(
        ("snapshotter", "streamed"),
        [
            pytest.param("overlayfs", False, id="overlayfs-one_chunk"),
            pytest.param("overlayfs", True, id="overlayfs-streamed_chunks"),
            pytest.param("native", True, id="native-streamed_chunks"),
        ],
    )
    async def test_over_the_import_limit_is_413(
        self, settings: Settings, ns_headers: dict[str, str], snapshotter: str, streamed: bool
    ) -> None:
        limited = replace(settings, import_max_bytes=64 * 1024)
        body = make_tar(reg("small", b"s"), reg("big", os.urandom(200 * 1024)))
        async with serving(limited) as client:
            api = Api(client, ns_headers, limited, disk_state(limited))
            await api.imported("fits", make_tar(reg("small", b"s")), snapshotter)
            before = await observe(api)
            content = chunked(body, 8 * 1024) if streamed else body
            response = await api.import_tar("huge", content, snapshotter)
            await assert_refused(api, before, response, 413, str(64 * 1024))

    async def test_unknown_snapshotter_is_400(self, api: Api) -> None:
        await api.imported("base", make_tar(reg("f")), "overlayfs")
        before = await observe(api)
        await assert_refused(api, before, await api.import_tar("x", make_tar(reg("f")), "zfs"), 400, "zfs")

    async def test_unknown_parent_is_422(self, api: Api) -> None:
        await api.imported("base", make_tar(reg("f")), DEFAULT)
        before = await observe(api)
        response = await api.import_tar("x", make_tar(reg("g")), DEFAULT, parent="nope")
        await assert_refused(api, before, response, 422, "nope")

    async def test_parent_from_the_other_snapshotter_is_422(self, api: Api) -> None:
        await api.imported("base", make_tar(reg("f")), "native")
        before = await observe(api)
        response = await api.import_tar("x", make_tar(reg("g")), "overlayfs", parent="base")
        await assert_refused(api, before, response, 422)

    @pytest.mark.parametrize("kind", [pytest.param("active", id="active"), pytest.param("view", id="view")])
    async def test_uncommitted_parent_is_422(self, api: Api, kind: str) -> None:
        await api.imported("base", make_tar(reg("f")), DEFAULT)
        await api.prepared("open", DEFAULT, parent="base", kind=kind)
        before = await observe(api)
        response = await api.import_tar("x", make_tar(reg("g")), DEFAULT, parent="open")
        await assert_refused(api, before, response, 422, kind)

    @pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
    async def test_existing_name_is_409(self, api: Api, snapshotter: str, tmp_path: Path) -> None:
        """Found only once the whole layer is unpacked (over a parent): that copy goes."""
        await api.imported("base", make_tar(reg("f", b"first")), snapshotter)
        await api.imported("layer", make_tar(reg("g", b"layer")), snapshotter, parent="base")
        before = await observe(api)
        response = await api.import_tar("layer", make_tar(reg("g", b"second")), snapshotter, parent="base")
        await assert_refused(api, before, response, 409, "layer")
        await api.prepared("look", snapshotter, parent="layer", kind="view")
        with mounted(await api.mounts("look", snapshotter), tmp_path / "view") as view:
            assert (view / "g").read_bytes() == b"layer"

    @pytest.mark.parametrize(
        "name", [pytest.param("bad/name", id="slash"), pytest.param("..", id="dots"), pytest.param("", id="empty")]
    )
    async def test_invalid_name_is_400(self, api: Api, name: str) -> None:
        await api.imported("base", make_tar(reg("f")), DEFAULT)
        before = await observe(api)
        await assert_refused(api, before, await api.import_tar(name, make_tar(reg("g")), DEFAULT), 400)

    async def test_missing_name_is_422(self, api: Api) -> None:
        await api.imported("base", make_tar(reg("f")), "overlayfs")
        before = await observe(api)
        response = await api.client.post("/snapshots/import", content=make_tar(reg("g")), headers=api.headers)
        await assert_refused(api, before, response, 422, "name")


# --- prepare and view --------------------------------------------------------------------


# Key reuse is found after the data dir is made (a full copy, for native): both snapshotters.
_PREPARE_REFUSED_BOTH = [
    ({"key": "x", "parent": "nope"}, 422, "unknown_parent"),
    ({"key": "x", "parent": "open"}, 422, "active_parent"),
    ({"key": "base", "parent": "base"}, 409, "key_of_a_committed"),
    ({"key": "open", "parent": "base"}, 409, "key_of_an_active"),
]
_PREPARE_REFUSED_ONE = [
    ({"key": "x", "parent": "look"}, 422, "view_parent"),
    ({"key": "look", "parent": "base", "kind": "view"}, 409, "key_of_a_view"),
    ({"key": "x", "kind": "committed"}, 422, "kind_committed"),
    ({"key": "bad/key"}, 422, "invalid_key"),
    ({"key": "x", "extra": 1}, 422, "unknown_field"),
    ({"parent": "base"}, 422, "no_key"),
]
PREPARE_REFUSED = [
    *(pytest.param(name, body, status, id=f"{name}-{case}")
      for name in ALL_SNAPSHOTTERS for body, status, case in _PREPARE_REFUSED_BOTH),
    *(pytest.param(DEFAULT, body, status, id=f"{DEFAULT}-{case}") for body, status, case in _PREPARE_REFUSED_ONE),
]


class TestPrepare:
    @pytest.mark.parametrize("kind", [pytest.param("active", id="active"), pytest.param("view", id="view")])
    @pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
    async def test_on_a_committed_parent(self, api: Api, snapshotter: str, kind: str) -> None:
        await api.imported("base", make_tar(reg("f")), snapshotter)
        since = await api.last_event_id()
        response = await api.prepare("snap", snapshotter, parent="base", kind=kind, labels={"role": "test"})
        assert response.status_code == 201, response.text
        assert response.headers["location"] == "/snapshots/snap"
        created = response.json()
        assert {k: created[k] for k in ("key", "kind", "parent", "labels", "snapshotter")} == {
            "key": "snap", "kind": kind, "parent": "base", "labels": {"role": "test"}, "snapshotter": snapshotter,
        }
        assert (await api.get("snap", snapshotter)).json() == created
        events = await api.events_after(since)
        assert [(e["topic"], e["event"]) for e in events] == [
            ("/snapshot/prepare", {"key": "snap", "parent": "base", "snapshotter": snapshotter})
        ]
        assert api.dir_of("snap", snapshotter).is_dir()
        await observe(api)

    @pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
    async def test_active_without_parent_is_an_empty_writable_dir(
        self, api: Api, snapshotter: str, tmp_path: Path
    ) -> None:
        created = await api.prepared("scratch", snapshotter)
        assert created["parent"] is None
        assert await api.usage("scratch", snapshotter) == {"size": 0, "inodes": 0}
        mounts = await api.mounts("scratch", snapshotter)
        assert [(m["type"], "rw" in m["options"]) for m in mounts] == [("bind", True)]
        with mounted(mounts, tmp_path / "scratch") as root:
            assert os.listdir(root) == []
            (root / "hello").write_bytes(b"hi")
        assert (await api.usage("scratch", snapshotter))["inodes"] == 1

    @pytest.mark.parametrize(("snapshotter", "body", "status"), PREPARE_REFUSED)
    async def test_refused(self, api: Api, snapshotter: str, body: Json, status: int) -> None:
        await api.imported("base", make_tar(reg("f")), snapshotter)
        await api.prepared("open", snapshotter, parent="base")
        await api.prepared("look", snapshotter, parent="base", kind="view")
        before = await observe(api)
        response = await api.client.post(
            "/snapshots", json=body, params={"snapshotter": snapshotter}, headers=api.headers
        )
        await assert_refused(api, before, response, status)

    async def test_unknown_snapshotter_is_400(self, api: Api) -> None:
        await api.imported("base", make_tar(reg("f")), "overlayfs")
        before = await observe(api)
        await assert_refused(api, before, await api.prepare("x", "btrfs", parent="base"), 400, "btrfs")

    async def test_snapshotters_are_separate(self, api: Api) -> None:
        await api.imported("base", make_tar(reg("f")), "overlayfs")
        await api.imported("base", make_tar(reg("f")), "native")  # same key, other snapshotter: fine
        await api.prepared("only-native", "native", parent="base")
        assert await api.keys("overlayfs") == ["base"]
        assert await api.keys("native") == ["base", "only-native"]
        assert_problem(await api.get("only-native", "overlayfs"), 404)
        assert len(api.namespace_rows("overlayfs")) == 1
        assert len(api.namespace_rows("native")) == 2
        await observe(api)


# --- commit ------------------------------------------------------------------------------


class TestCommit:
    @pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
    async def test_active_becomes_committed_under_its_name(
        self, api: Api, snapshotter: str, tmp_path: Path
    ) -> None:
        await api.imported("base", make_tar(reg("from-base", b"b")), snapshotter)
        await api.prepared("work", snapshotter, parent="base")
        with mounted(await api.mounts("work", snapshotter), tmp_path / "work") as root:
            (root / "from-work").write_bytes(b"w")
        data = api.dir_of("work", snapshotter)
        since = await api.last_event_id()

        response = await api.commit("work", "image", snapshotter, labels={"v": "1"})
        assert response.status_code == 201, response.text
        assert response.headers["location"] == "/snapshots/image"
        committed = response.json()
        assert {k: committed[k] for k in ("key", "kind", "parent", "labels")} == {
            "key": "image", "kind": "committed", "parent": "base", "labels": {"v": "1"},
        }
        assert_problem(await api.get("work", snapshotter), 404)
        assert sorted(await api.keys(snapshotter)) == ["base", "image"]
        assert api.dir_of("image", snapshotter) == data  # the data is the same, renamed in the store only
        events = await api.events_after(since)
        assert [(e["topic"], e["event"]) for e in events] == [
            ("/snapshot/commit", {"key": "work", "name": "image", "snapshotter": snapshotter})
        ]
        assert_problem(await api.client.get(
            "/snapshots/image/mounts", params={"snapshotter": snapshotter}, headers=api.headers
        ), 409)

        await api.prepared("child", snapshotter, parent="image", kind="view")
        with mounted(await api.mounts("child", snapshotter), tmp_path / "child") as root:
            assert (root / "from-base").read_bytes() == b"b"
            assert (root / "from-work").read_bytes() == b"w"
        await observe(api)

    @pytest.mark.parametrize(
        ("key", "name", "status"),
        [
            pytest.param("look", "x", 409, id="a_view"),
            pytest.param("base", "x", 409, id="a_committed"),
            pytest.param("open", "base", 409, id="name_taken"),
            pytest.param("pinned", "x", 409, id="used_by_a_container"),
            pytest.param("ghost", "x", 404, id="unknown_key"),
            pytest.param("open", "bad/name", 422, id="invalid_name"),
        ],
    )
    async def test_refused(self, api: Api, key: str, name: str, status: int) -> None:
        snapshotter = DEFAULT
        await api.imported("base", make_tar(reg("f")), snapshotter)
        await api.prepared("open", snapshotter, parent="base")
        await api.prepared("look", snapshotter, parent="base", kind="view")
        await api.prepared("pinned", snapshotter, parent="base")
        await api.create_container("user", snapshotter, "pinned")
        before = await observe(api)
        await assert_refused(api, before, await api.commit(key, name, snapshotter), status)

    async def test_unknown_snapshotter_is_400(self, api: Api) -> None:
        await api.prepared("open", "overlayfs")
        before = await observe(api)
        await assert_refused(api, before, await api.commit("open", "x", "aufs"), 400, "aufs")


# --- mounts and usage -------------------------------------------------------------------------


class TestMounts:
    async def test_overlay_active_on_a_chain(self, api: Api, busybox_tar: bytes) -> None:
        await api.imported("busybox", busybox_tar, "overlayfs")
        await api.imported("layer", busybox_layer(), "overlayfs", parent="busybox")
        await api.prepared("work", "overlayfs", parent="layer")
        mounts = await api.mounts("work", "overlayfs")
        assert len(mounts) == 1
        assert mounts[0]["type"] == "overlay"
        options = dict(option.split("=", 1) for option in mounts[0]["options"])
        work, layer, busybox = (api.dir_of(k, "overlayfs") for k in ("work", "layer", "busybox"))
        assert options == {
            "upperdir": str(work / "fs"),
            "workdir": str(work / "work"),
            "lowerdir": f"{layer / 'fs'}:{busybox / 'fs'}",
        }

    @pytest.mark.parametrize(
        ("snapshotter", "key", "kind", "readonly"),
        [
            pytest.param("overlayfs", "scratch", "bind", False, id="overlayfs-active_no_parent"),
            pytest.param("overlayfs", "view-one", "bind", True, id="overlayfs-view_one_parent"),
            pytest.param("overlayfs", "view-two", "overlay", True, id="overlayfs-view_two_parents"),
            pytest.param("native", "work", "bind", False, id="native-active"),
            pytest.param("native", "view-two", "bind", True, id="native-view"),
        ],
    )
    async def test_shape(self, api: Api, snapshotter: str, key: str, kind: str, readonly: bool) -> None:
        await api.imported("base", make_tar(reg("f")), snapshotter)
        await api.imported("layer", make_tar(reg("g")), snapshotter, parent="base")
        await api.prepared("scratch", snapshotter)
        await api.prepared("work", snapshotter, parent="layer")
        await api.prepared("view-one", snapshotter, parent="base", kind="view")
        await api.prepared("view-two", snapshotter, parent="layer", kind="view")
        mounts = await api.mounts(key, snapshotter)
        assert [m["type"] for m in mounts] == [kind]
        options = mounts[0]["options"]
        if kind == "bind":
            assert ("ro" if readonly else "rw") in options
            assert Path(mounts[0]["source"]).is_relative_to(api.settings.root / "snapshots" / snapshotter)
        else:
            assert not any(option.startswith(("upperdir=", "workdir=")) for option in options)
            assert any(option.startswith("lowerdir=") for option in options)

    @pytest.mark.parametrize(
        ("key", "status"), [pytest.param("base", 409, id="committed"), pytest.param("ghost", 404, id="unknown")]
    )
    async def test_refused(self, api: Api, key: str, status: int) -> None:
        snapshotter = DEFAULT
        await api.imported("base", make_tar(reg("f")), snapshotter)
        response = await api.client.get(
            f"/snapshots/{key}/mounts", params={"snapshotter": snapshotter}, headers=api.headers
        )
        assert_problem(response, status, key)


class TestUsage:
    @pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
    async def test_bytes_and_inodes(self, api: Api, snapshotter: str) -> None:
        payload = os.urandom(100_000)
        await api.imported("base", make_tar(dir_("d"), reg("d/a", payload), reg("d/b", b"b"), link("h", "d/a")),
                           snapshotter)
        usage = await api.usage("base", snapshotter)
        assert usage["inodes"] == 3  # d, d/a, d/b: the hard link is the same inode
        assert usage["size"] >= len(payload)
        await api.prepared("open", snapshotter, parent="base")
        active = await api.usage("open", snapshotter)
        if snapshotter == "native":
            assert active == usage  # a full copy
        else:
            assert active == {"size": 0, "inodes": 0}  # nothing of its own yet

    async def test_unknown_is_404(self, api: Api) -> None:
        snapshotter = DEFAULT
        await api.imported("base", make_tar(reg("f")), snapshotter)
        response = await api.client.get(
            "/snapshots/ghost/usage", params={"snapshotter": snapshotter}, headers=api.headers
        )
        assert_problem(response, 404, "ghost")


# --- list and get -----------------------------------------------------------------------------


class TestListAndGet:
    @pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
    async def test_list_and_get(self, api: Api, snapshotter: str) -> None:
        await api.imported("base", make_tar(reg("f")), snapshotter)
        await api.prepared("b-active", snapshotter, parent="base")
        await api.prepared("a-view", snapshotter, parent="base", kind="view")
        listed = (await api.list_snapshots(snapshotter)).json()["snapshots"]
        assert [(s["key"], s["kind"], s["parent"]) for s in listed] == [
            ("a-view", "view", "base"), ("b-active", "active", "base"), ("base", "committed", None),
        ]
        for snapshot in listed:
            assert (await api.get(snapshot["key"], snapshotter)).json() == snapshot

    async def test_default_snapshotter_is_the_daemons(self, api: Api) -> None:
        await api.imported("base", make_tar(reg("f")), "overlayfs")
        default = (await api.client.get("/snapshots", headers=api.headers)).json()["snapshots"]
        assert [s["snapshotter"] for s in default] == ["overlayfs"]

    async def test_namespaces_do_not_see_each_other(self, api: Api) -> None:
        await api.imported("base", make_tar(reg("f")), "overlayfs")
        other = {"Cargohold-Namespace": api.headers["Cargohold-Namespace"] + "-other"}
        assert (await api.client.post("/namespaces", json={"name": other["Cargohold-Namespace"]})).status_code == 201
        listed = await api.client.get("/snapshots", params={"snapshotter": "overlayfs"}, headers=other)
        assert listed.json()["snapshots"] == []
        assert_problem(await api.client.get("/snapshots/base", headers=other), 404)

    @pytest.mark.parametrize(
        ("path", "status"),
        [
            pytest.param("/snapshots/ghost", 404, id="get_unknown"),
            pytest.param("/snapshots?snapshotter=zfs", 400, id="list_unknown_snapshotter"),
            pytest.param("/snapshots/base?snapshotter=zfs", 400, id="get_unknown_snapshotter"),
            pytest.param("/snapshots/bad..key", 400, id="get_invalid_key"),
        ],
    )
    async def test_refused(self, api: Api, path: str, status: int) -> None:
        await api.imported("base", make_tar(reg("f")), "overlayfs")
        assert_problem(await api.client.get(path, headers=api.headers), status)


# --- remove --------------------------------------------------------------------------------


class TestRemove:
    @pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
    async def test_remove_leaf_then_parent(self, api: Api, snapshotter: str) -> None:
        await api.imported("base", make_tar(reg("f")), snapshotter)
        await api.prepared("open", snapshotter, parent="base")
        base_dir, open_dir = api.dir_of("base", snapshotter), api.dir_of("open", snapshotter)
        since = await api.last_event_id()

        assert (await api.remove("open", snapshotter)).status_code == 204
        assert not open_dir.exists()
        assert_problem(await api.get("open", snapshotter), 404)
        assert (await api.remove("base", snapshotter)).status_code == 204
        assert not base_dir.exists()
        assert await api.keys(snapshotter) == []
        events = await api.events_after(since)
        assert [(e["topic"], e["event"]) for e in events] == [
            ("/snapshot/remove", {"key": "open", "snapshotter": snapshotter}),
            ("/snapshot/remove", {"key": "base", "snapshotter": snapshotter}),
        ]
        await observe(api)

    @pytest.mark.parametrize(
        ("key", "status"),
        [
            pytest.param("base", 409, id="parent_of_another"),
            pytest.param("pinned", 409, id="used_by_a_container"),
            pytest.param("image", 409, id="committed_used_by_a_container"),
            pytest.param("ghost", 404, id="unknown"),
        ],
    )
    async def test_refused(self, api: Api, key: str, status: int) -> None:
        snapshotter = DEFAULT
        await api.imported("base", make_tar(reg("f")), snapshotter)
        await api.imported("image", make_tar(reg("g")), snapshotter)
        await api.prepared("pinned", snapshotter, parent="base")
        await api.create_container("c1", snapshotter, "pinned")
        await api.create_container("c2", snapshotter, "image")
        before = await observe(api)
        await assert_refused(api, before, await api.remove(key, snapshotter), status, key)

    async def test_unknown_snapshotter_is_400(self, api: Api) -> None:
        await api.imported("base", make_tar(reg("f")), "overlayfs")
        before = await observe(api)
        await assert_refused(api, before, await api.remove("base", "zfs"), 400)


# --- containers pin snapshots ----------------------------------------------------------------


class TestContainersPinSnapshots:
    @pytest.mark.parametrize(
        ("fields", "status"),
        [
            pytest.param({"snapshot_key": "ghost"}, 422, id="unknown_key"),
            pytest.param({"snapshot_key": "base", "snapshotter": "other"}, 400, id="unknown_snapshotter"),
            pytest.param({"snapshot_key": "only-native"}, 422, id="key_of_the_other_snapshotter"),
        ],
    )
    async def test_create_with_a_missing_snapshot_is_refused(
        self, api: Api, fields: Json, status: int
    ) -> None:
        await api.imported("base", make_tar(reg("f")), "overlayfs")
        await api.prepared("only-native", "native")
        before = await observe(api)
        body = container_body("web", **{"snapshotter": "overlayfs", **fields})
        await assert_refused(api, before, await api.client.post("/containers", json=body, headers=api.headers), status)
        assert_problem(await api.client.get("/containers/web", headers=api.headers), 404)

    @pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
    async def test_delete_releases_its_active_snapshot(self, api: Api, snapshotter: str) -> None:
        await api.imported("image", make_tar(reg("f")), snapshotter)
        await api.prepared("web-root", snapshotter, parent="image")
        data = api.dir_of("web-root", snapshotter)
        await api.create_container("web", snapshotter, "web-root")
        since = await api.last_event_id()

        assert (await api.client.delete("/containers/web", headers=api.headers)).status_code == 204
        events = await api.events_after(since)
        assert [(e["topic"], e["event"]) for e in events] == [
            ("/containers/delete", {"id": "web"}),
            ("/snapshot/remove", {"key": "web-root", "snapshotter": snapshotter}),
        ]
        assert not data.exists()
        assert await api.keys(snapshotter) == ["image"]  # the committed image is kept
        await observe(api)

    @pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
    async def test_shared_snapshot_goes_with_its_last_container(self, api: Api, snapshotter: str) -> None:
        await api.prepared("shared", snapshotter)
        await api.create_container("one", snapshotter, "shared")
        await api.create_container("two", snapshotter, "shared")
        since = await api.last_event_id()
        assert (await api.client.delete("/containers/one", headers=api.headers)).status_code == 204
        assert [e["topic"] for e in await api.events_after(since)] == ["/containers/delete"]
        assert await api.keys(snapshotter) == ["shared"]
        assert_problem(await api.remove("shared", snapshotter), 409, "two")
        assert (await api.client.delete("/containers/two", headers=api.headers)).status_code == 204
        assert await api.keys(snapshotter) == []
        await observe(api)

    @pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
    async def test_committed_image_is_kept(self, api: Api, snapshotter: str) -> None:
        await api.imported("image", make_tar(reg("f")), snapshotter)
        await api.create_container("web", snapshotter, "image")
        since = await api.last_event_id()
        assert (await api.client.delete("/containers/web", headers=api.headers)).status_code == 204
        assert [e["topic"] for e in await api.events_after(since)] == ["/containers/delete"]
        assert await api.keys(snapshotter) == ["image"]
        assert (await api.remove("image", snapshotter)).status_code == 204  # free now
        await observe(api)
