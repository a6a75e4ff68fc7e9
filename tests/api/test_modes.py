"""DESIGN "On disk": root and state 0711; snapshots, content, logs and tasks 0700; the
database (and its -wal, -shm) 0600. At start-up the daemon fixes wider modes (and says
so), refuses what it cannot trust, and the umask never matters."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from app.config import Listener, Settings
from app.main import load_token
from app.ondisk import StartupError
from tests.conftest import container_body, in_process_client

pytestmark = pytest.mark.anyio


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def expected_modes(settings: Settings) -> dict[Path, int]:
    root, state, db = settings.root, settings.state, settings.database_path
    return {
        root: 0o711, state: 0o711,
        root / "snapshots": 0o700, root / "content": 0o700, root / "logs": 0o700, state / "tasks": 0o700,
        db: 0o600, db.with_name("metadata.db-wal"): 0o600, db.with_name("metadata.db-shm"): 0o600,
    }


def modes(settings: Settings) -> dict[Path, int]:
    return {path: mode_of(path) for path in expected_modes(settings)}


@pytest.fixture
def umask_0() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


async def test_a_fresh_start_makes_every_mode_whatever_the_umask(settings: Settings, umask_0: None) -> None:
    async with in_process_client(settings) as client:
        assert (await client.post("/containers", json=container_body("web"))).status_code == 201
        # While the daemon runs: SQLite made -wal and -shm with the database file's mode.
        assert modes(settings) == expected_modes(settings)


async def test_wide_modes_are_fixed_at_start_and_logged(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    async with in_process_client(settings) as client:
        assert (await client.post("/containers", json=container_body("web"))).status_code == 201
    for path in expected_modes(settings):
        if path.exists():
            path.chmod(0o777 if path.is_dir() else 0o644)
    (settings.database_path.with_name("metadata.db-wal")).touch(mode=0o666)
    os.chmod(settings.database_path.with_name("metadata.db-wal"), 0o666)

    async with in_process_client(settings) as client:
        assert modes(settings) == expected_modes(settings)
        listed = await client.get("/containers")
        assert [c["id"] for c in listed.json()["containers"]] == ["web"], "the data is still there"
    assert f"{settings.root} had mode 0777; set to 0711" in caplog.text
    assert f"{settings.root / 'snapshots'} had mode 0777; set to 0700" in caplog.text
    assert f"{settings.database_path} had mode 0644; set to 0600" in caplog.text


async def test_the_token_file_mode_is_fixed(settings: Settings) -> None:
    tcp = replace(settings, listeners=(Listener.parse("tcp://127.0.0.1:1"),))
    token = load_token(tcp)
    (settings.state / "token").chmod(0o644)
    assert load_token(tcp) == token
    assert mode_of(settings.state / "token") == 0o600


async def refuse(settings: Settings, reason: str) -> None:
    with pytest.raises(StartupError, match=reason):
        async with in_process_client(settings):
            pass


async def test_a_symlinked_private_dir_is_refused_and_not_followed(settings: Settings, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    elsewhere.chmod(0o755)
    settings.root.mkdir()
    (settings.root / "snapshots").symlink_to(elsewhere)
    await refuse(settings, f"{settings.root / 'snapshots'} is a symbolic link")
    assert mode_of(elsewhere) == 0o755, "the link's target was not chmod-ed"
    assert not settings.database_path.exists(), "refused before the database was opened"


async def test_a_dir_owned_by_another_user_is_refused(settings: Settings) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    logs = settings.root / "logs"
    logs.mkdir(parents=True)
    os.chown(logs, 12345, 12345)
    logs.chmod(0o777)
    await refuse(settings, "owned by uid 12345")
    assert mode_of(logs) == 0o777, "nothing of it was changed"


async def test_a_file_where_a_dir_belongs_is_refused(settings: Settings) -> None:
    settings.state.mkdir(parents=True)
    (settings.state / "tasks").write_text("not a directory")
    await refuse(settings, "is not a directory")


async def test_a_symlinked_database_is_refused(settings: Settings, tmp_path: Path) -> None:
    settings.root.mkdir()
    (tmp_path / "other.db").write_bytes(b"")
    settings.database_path.symlink_to(tmp_path / "other.db")
    await refuse(settings, "metadata.db is a symbolic link")
