"""POST /snapshots/import against a real uvicorn on a unix socket (streamed bodies:
ASGITransport would buffer them): the limits (decompressed bytes, entries, special
headers, an idle upload) each answer a clear problem and leave nothing (no row, no
event, no data dir, no mount); stalled uploads hold threads of the import executor
only, so other requests (health, another import, calls on the default executor) are
served meanwhile; a hostile layer leaves a real host file as it was; device nodes are
made only while the snapshots directory is private.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from app.config import Listener, Settings
from app.snapshots.layers import remove_tree
from tests.api.snapshots import Disk, assert_problem, disk_state, make_tar, reg
from tests.conftest import in_process_client, running_server, uds_client, wait_for
from tests.layers import ESCAPES, Host, giant_special_header, gzip_bomb, gzipped, tar

pytestmark = pytest.mark.anyio

IDLE = 2.0  # --import-idle-timeout in these tests
PROMPT = 1.5  # seconds within which a request served beside stalled uploads must answer
SNAPSHOTTERS = [pytest.param("overlayfs", id="overlayfs"), pytest.param("native", id="native")]


@dataclass
class Daemon:
    client: httpx.AsyncClient
    settings: Settings
    headers: dict[str, str]

    async def import_tar(self, name: str, body: bytes, snapshotter: str = "overlayfs",
                         parent: str | None = None) -> httpx.Response:
        params = {"name": name, "snapshotter": snapshotter}
        if parent:
            params["parent"] = parent
        async with asyncio.timeout(30):
            return await self.client.post("/snapshots/import", params=params, content=body, headers=self.headers)

    def nothing_changed_since(self, before: Disk) -> None:
        after = disk_state(self.settings)
        assert after == before, f"a refused import left something: {before} -> {after}"


@asynccontextmanager
async def serving(tmp_path: Path, namespace: str, root: Path | None = None, **limits: object) -> AsyncIterator[Daemon]:
    settings = Settings(
        root=root or tmp_path / "root", state=tmp_path / "state",
        listeners=(Listener.parse(f"unix://{tmp_path / 'state' / 'cargohold.sock'}"),),
        import_max_bytes=16 * 1024 * 1024, import_max_entries=100, import_idle_timeout=IDLE, import_concurrency=2,
    )
    settings = replace(settings, **limits)  # type: ignore[arg-type]
    async with running_server(settings), uds_client(settings, timeout=30) as client:
        yield Daemon(client, settings, {"Cargohold-Namespace": namespace})


class TestLimits:
    async def test_gzip_bomb_is_413_and_leaves_nothing(self, tmp_path: Path, namespace: str) -> None:
        body = gzip_bomb(512 * 1024 * 1024)
        assert len(body) < 600 * 1024
        async with serving(tmp_path, namespace) as daemon:
            before = disk_state(daemon.settings)
            started = time.monotonic()
            response = await daemon.import_tar("bomb", body)
            assert_problem(response, 413, str(16 * 1024 * 1024), "decompressed")
            assert time.monotonic() - started < 10
            daemon.nothing_changed_since(before)

    async def test_giant_pax_header_is_413_and_leaves_nothing(self, tmp_path: Path, namespace: str) -> None:
        body = gzipped(giant_special_header(b"x", 300 * 1024 * 1024))
        assert len(body) < 600 * 1024
        async with serving(tmp_path, namespace, import_max_bytes=1024**3) as daemon:
            before = disk_state(daemon.settings)
            response = await daemon.import_tar("pax", body)
            assert_problem(response, 413, "extended header", str(1024 * 1024))
            daemon.nothing_changed_since(before)

    async def test_too_many_members_is_413_and_leaves_nothing(self, tmp_path: Path, namespace: str) -> None:
        async with serving(tmp_path, namespace) as daemon:
            fits = await daemon.import_tar("fits", make_tar(*(reg(f"f{i}") for i in range(100))))
            assert fits.status_code == 201, fits.text
            before = disk_state(daemon.settings)
            response = await daemon.import_tar("many", make_tar(*(reg(f"f{i}") for i in range(101))))
            assert_problem(response, 413, "100")
            daemon.nothing_changed_since(before)


class TestHostUntouched:
    @pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
    async def test_every_escape_through_the_api(self, tmp_path: Path, namespace: str, snapshotter: str) -> None:
        """Each layer of the unit tests' ESCAPES (issue 12's case first: `x`, a hard link to
        `evil` -> host file, mode 04777, uid 1234), imported: a 201 or a 400 that leaves
        nothing, and the host file and directory (content, mode, owner, times, links) as
        they were."""
        async with serving(tmp_path, namespace) as daemon:
            for number, case in enumerate(ESCAPES):
                (escape,) = case.values
                host_dir = tmp_path / f"host{number}"
                host_dir.mkdir()
                host = Host(host_dir, host_dir / "secret")
                host.file.write_bytes(b"host data\n")
                host.file.chmod(0o644)
                os.utime(host.file, (1_000_000_000, 1_000_000_000))
                os.utime(host.directory, (1_000_000_000, 1_000_000_000))
                before, disk = host.state(), disk_state(daemon.settings)
                response = await daemon.import_tar(f"escape{number}", tar(*escape(host)), snapshotter)
                assert response.status_code in (201, 400), (case.id, response.text)
                if response.status_code == 400:
                    daemon.nothing_changed_since(disk)
                assert host.state() == before, case.id


def device_tar() -> bytes:
    null = reg("dev/null")
    null[0].type, null[0].devmajor, null[0].devminor, null[0].mode = b"3", 1, 3, 0o666
    return make_tar(reg("ok", b"x"), null)


class TestDevices:
    async def test_made_only_while_the_snapshots_dir_is_private(self, tmp_path: Path, namespace: str) -> None:
        public = Path(tempfile.mkdtemp(prefix="cargohold-root-"))  # in /tmp: others can reach it
        previous_umask = os.umask(0o022)  # data dirs searchable by others unless an ancestor is not
        try:
            public.chmod(0o755)
            async with serving(tmp_path, namespace, root=public) as daemon:
                snapshots = public / "snapshots"
                snapshots.mkdir(exist_ok=True)
                snapshots.chmod(0o755)  # as a careless host would have it
                before = disk_state(daemon.settings)
                refused = await daemon.import_tar("devices", device_tar())
                assert_problem(refused, 400, "device")
                daemon.nothing_changed_since(before)

                snapshots.chmod(0o700)  # as the daemon keeps it
                made = await daemon.import_tar("devices", device_tar())
                assert made.status_code == 201, made.text
                nodes = [Path(d) / "null" for d, _, files in os.walk(snapshots) if "null" in files]
                assert len(nodes) == 1 and stat.S_ISCHR(os.lstat(nodes[0]).st_mode)
        finally:
            os.umask(previous_umask)
            shutil.rmtree(public, ignore_errors=True)


# --- stalled uploads ---------------------------------------------------------------------


@dataclass
class Stalled:
    """A raw upload that sent its headers and the start of a tar, then nothing."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @classmethod
    async def start(cls, daemon: Daemon, name: str) -> Stalled:
        reader, writer = await asyncio.open_unix_connection(str(daemon.settings.state / "cargohold.sock"))
        start = make_tar(reg("first", b"1" * 3000), reg("big", os.urandom(64 * 1024)))[:5000]
        writer.write(
            f"POST /snapshots/import?name={name}&snapshotter=overlayfs HTTP/1.1\r\nHost: cargohold\r\n"
            f"Cargohold-Namespace: {daemon.headers['Cargohold-Namespace']}\r\n"
            f"Content-Length: {10 * 1024 * 1024}\r\n\r\n".encode() + start
        )
        await writer.drain()
        return cls(reader, writer)

    async def answer(self, within: float) -> tuple[int, bytes]:
        async with asyncio.timeout(within):
            head = await self.reader.readuntil(b"\r\n\r\n")
            body = await self.reader.read(4096)
        return int(head.split()[1]), body

    def close(self) -> None:
        self.writer.close()


def data_dirs(settings: Settings) -> set[str]:
    base = settings.root / "snapshots" / "overlayfs"
    return set(os.listdir(base)) if base.is_dir() else set()


async def timed(request: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await request
    return response, time.monotonic() - started


class TestStalledUploads:
    async def test_others_are_served_then_the_stalled_one_is_cleaned_up(
        self, tmp_path: Path, namespace: str
    ) -> None:
        async with serving(tmp_path, namespace) as daemon:
            before = disk_state(daemon.settings)
            stalled = await Stalled.start(daemon, "stalled")
            try:
                await wait_for(lambda: len(data_dirs(daemon.settings)) == 1, "the import is under way")

                health, took = await timed(daemon.client.get("/healthz"))
                assert health.status_code == 200 and took < PROMPT, took
                other, took = await timed(daemon.import_tar("other", make_tar(reg("f", b"x"))))
                assert other.status_code == 201 and took < PROMPT, (other.text, took)
                assert len(data_dirs(daemon.settings)) == 2  # the stalled one is still there

                status, body = await stalled.answer(within=IDLE + 5)
                assert status == 400
                assert b"sent nothing" in body
            finally:
                stalled.close()
            keys = [s["key"] for s in (await daemon.client.get("/snapshots", headers=daemon.headers)).json()[
                "snapshots"]]
            assert keys == ["other"]
            after = disk_state(daemon.settings)
            assert after.dirs["overlayfs"] - before.dirs["overlayfs"] == after.rows["overlayfs"] - before.rows[
                "overlayfs"]
            assert after.mounts == before.mounts
            events = (await daemon.client.get("/events/history", params={"since": before.last_event})).json()
            assert [e["event"].get("key") for e in events["events"] if e["topic"].startswith("/snapshot")] == ["other"]

    async def test_many_stalled_uploads_leave_the_default_executor_free(
        self, tmp_path: Path, namespace: str
    ) -> None:
        """More stalled uploads than the default executor has threads (min(32, cpus + 4)):
        a call that runs on it (GET usage: a directory walk in `asyncio.to_thread`) answers."""
        count = min(32, (os.cpu_count() or 1) + 4) + 2
        async with serving(tmp_path, namespace) as daemon:
            base = await daemon.import_tar("base", make_tar(reg("f", b"x")))
            assert base.status_code == 201, base.text
            before = disk_state(daemon.settings)
            uploads = [await Stalled.start(daemon, f"stalled{i}") for i in range(count)]
            try:
                # The first two hold the import threads; the others wait for one.
                await wait_for(lambda: len(data_dirs(daemon.settings)) == 1 + count, "every import is under way")
                # The queued ones have nothing to show while they wait for a thread: a moment for them to queue.
                await asyncio.sleep(0.3)
                usage, took = await timed(daemon.client.get("/snapshots/base/usage", headers=daemon.headers,
                                                            params={"snapshotter": "overlayfs"}))
                assert usage.status_code == 200 and took < PROMPT, (usage.text, took)
                health, took = await timed(daemon.client.get("/healthz"))
                assert health.status_code == 200 and took < PROMPT, took
                answers = await asyncio.gather(*(upload.answer(within=IDLE + 10) for upload in uploads))
                assert {status for status, _ in answers} == {400}
            finally:
                for upload in uploads:
                    upload.close()
            daemon.nothing_changed_since(before)


class TestDeepTree:
    async def test_usage_and_remove_of_a_tree_deeper_than_pythons_stack(
        self, tmp_path: Path, namespace: str
    ) -> None:
        depth = 1500
        async with serving(tmp_path, namespace, import_max_entries=2000) as daemon:
            before = disk_state(daemon.settings)
            try:
                made = await daemon.import_tar("deep", make_tar(reg("/".join(["d"] * depth) + "/f", b"x")))
                assert made.status_code == 201, made.text
                usage = await daemon.client.get("/snapshots/deep/usage", headers=daemon.headers)
                assert usage.status_code == 200, usage.text
                assert usage.json()["inodes"] == depth + 1
                removed = await daemon.client.delete("/snapshots/deep", headers=daemon.headers)
                assert removed.status_code == 204, removed.text
                after = disk_state(daemon.settings)
                assert after.dirs == before.dirs and after.rows == before.rows and after.mounts == before.mounts
            finally:  # pytest's clean-up of tmp_path (shutil.rmtree) would fail on a tree this deep
                for leftover in (daemon.settings.root / "snapshots").glob("*/*"):
                    remove_tree(leftover)


class TestSynced:
    async def test_imported_data_is_on_disk_when_the_snapshot_is_committed(
        self, tmp_path: Path, namespace: str
    ) -> None:
        """The daemon's root on an ext4 of its own (a loop device over an image file): the
        image file shows what the filesystem has written back. Right after the 201 the
        imported file is in it; a file written afterwards, as a control, is not (the kernel
        writes dirty data back after 30 s), so the import's own sync put it there."""
        image, root = tmp_path / "disk.img", tmp_path / "root"
        with open(image, "wb") as disk:
            disk.truncate(64 * 1024 * 1024)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
        root.mkdir()
        subprocess.run(["mount", "-o", "loop", str(image), str(root)], check=True)
        imported, control = os.urandom(64 * 1024), os.urandom(64 * 1024)
        try:
            settings = Settings(root=root, state=tmp_path / "state", listeners=())
            async with in_process_client(settings) as client:
                response = await client.post(
                    "/snapshots/import", params={"name": "synced"}, content=make_tar(reg("data", imported)),
                    headers={"Cargohold-Namespace": namespace},
                )
                assert response.status_code == 201, response.text
                (root / "control").write_bytes(control)
                written_back = image.read_bytes()
                control_on_disk, imported_on_disk = control in written_back, imported in written_back
                assert not control_on_disk, "the kernel wrote back on its own: this test proves nothing"
                assert imported_on_disk, "the snapshot was committed before its data reached the disk"
        finally:
            subprocess.run(["umount", str(root)], check=False)
