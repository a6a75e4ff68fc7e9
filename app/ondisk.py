"""Who may read what on disk (DESIGN "On disk"), checked and fixed at start-up.

Root and state are 0711: others may pass through (to the socket, whose own mode is the
gate) but not list them. Snapshots, content, the import spool, logs and task bundles are
0700: layers hold setuid binaries and device nodes, bundles and logs hold the containers'
environment. The database (with its -wal and -shm) and the token are 0600, as is each
bundle's config.json (written by runtime/bundle.py with `write_private`).

A path with a wider (or otherwise different) mode is chmod-ed and the change logged; one
that cannot be trusted - a symbolic link, not a directory, owned by another user - makes
the daemon refuse to start (`StartupError`) rather than follow it. Modes are set with
chmod after creation, so the umask never matters. This module must not import anything
above `config`.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

from .config import Settings

log = logging.getLogger(__name__)

PUBLIC_DIR = 0o711
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


class StartupError(Exception):
    """The daemon refuses to start; the message says what is wrong and what to do."""


def private_dirs(settings: Settings) -> tuple[Path, ...]:
    """The 0700 directories: snapshots, content (blobs), the import spool, task logs and bundles."""
    root, state = settings.root, settings.state
    return (root / "snapshots", root / "content", root / "spool", root / "logs", state / "tasks")


def secure_layout(settings: Settings) -> None:
    """Make root, state and their private directories with DESIGN's modes, fix the modes
    of those (and of the database files) that differ. Raises StartupError for a path it
    cannot trust."""
    ensure_dir(settings.root, PUBLIC_DIR)
    ensure_dir(settings.state, PUBLIC_DIR)
    for path in private_dirs(settings):
        ensure_dir(path, PRIVATE_DIR)
    database = settings.database_path
    for path in (database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")):
        if path.exists() or path.is_symlink():
            ensure_file(path, PRIVATE_FILE)


def ensure_dir(path: Path, mode: int) -> None:
    """Create `path` (and missing parents, with the umask's modes) or check it: then give
    it exactly `mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        created = False
    else:
        created = True
    info = _trusted(path, stat.S_ISDIR, "directory")
    _set_mode(path, info, mode, quiet=created)  # a new one only lost bits to the umask


def ensure_file(path: Path, mode: int) -> None:
    """Check an existing file (not a link, ours) and give it exactly `mode`."""
    info = _trusted(path, stat.S_ISREG, "regular file")
    _set_mode(path, info, mode)


def create_private(path: Path) -> None:
    """Create `path` empty with mode 0600 if it does not exist (so what SQLite later makes
    beside it, -wal and -shm, gets 0600 too: it copies the database file's mode)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, PRIVATE_FILE)  # the umask may have taken bits away; never adds any
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Write `path` with mode 0600 whatever the umask, never through a symbolic link."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(fd, PRIVATE_FILE)  # an existing file keeps its mode through O_CREAT
        file.write(data)


def _trusted(path: Path, is_kind: Callable[[int], bool], kind: str) -> os.stat_result:
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise StartupError(
            f"{path} is a symbolic link; cargohold does not follow links in its own directories: "
            f"replace it with a real {kind}, or give the link's target as --root/--state"
        )
    if not is_kind(info.st_mode):
        raise StartupError(f"{path} is not a {kind}; move it away and start again")
    if info.st_uid != os.geteuid():
        raise StartupError(
            f"{path} is owned by uid {info.st_uid}, not by the daemon's uid {os.geteuid()}: "
            "another user could change what it holds; chown it or choose another --root/--state"
        )
    return info


def _set_mode(path: Path, info: os.stat_result, mode: int, quiet: bool = False) -> None:
    current = stat.S_IMODE(info.st_mode)
    if current == mode:
        return
    os.chmod(path, mode, follow_symlinks=False)
    if not quiet:
        log.warning("%s had mode %04o; set to %04o (DESIGN \"On disk\")", path, current, mode)
