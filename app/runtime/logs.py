"""Task logs: where the init process's log lives (`TaskLogs`), and reading conmon's
CRI-format logs: `<RFC 3339 time> <stdout|stderr> <P|F> <text>`.

`P` marks a partial line continued by the next record, `F` a full one; they are joined,
up to `max_line_bytes`: a longer line (a task printing without a newline for ever) is
served in parts of at most that many bytes, each but the last marked `partial`, as CRI's
`P` tag marks them, so the daemon holds one part, never the whole line. Files are read
a record at a time, in binary, each read bounded too, so a task that printed 100 MB
costs the daemon a buffer, not 100 MB; `tail` keeps only the last N lines. `follow`
keeps reading while the task runs, and starts over when conmon truncated the file at its
size cap. Each open, stat and read runs in a thread through `asyncio.to_thread`, the
daemon's one way to take file I/O off the loop: a log may be large and its disk slow.

`TaskLogs` is the one owner of `<root>/logs/<namespace>/<id>.log`: the task service
writes through it, the container service forgets a log through it when its container
goes (so neither service calls the other).
"""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from io import BufferedReader
from pathlib import Path

from ..models import LogLine

FOLLOW_POLL_SECONDS = 0.1
DEFAULT_MAX_LINE_BYTES = 64 * 1024
# Room for a record's time, stream and tag before its text (conmon's are ~40 bytes).
_HEADER_ROOM = 256


class TaskLogs:
    """The log of each container's last task run: kept until the container goes or a new
    task starts for it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, namespace: str, task_id: str) -> Path:
        return self.root / namespace / f"{task_id}.log"

    def forget(self, namespace: str, task_id: str) -> None:
        """The container is gone: so is the log of its last run."""
        self.path(namespace, task_id).unlink(missing_ok=True)


def _parse(raw: bytes) -> tuple[datetime, str, bool, bytes] | None:
    parts = raw.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 3:
        return None
    try:
        time = datetime.fromisoformat(parts[0].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
    return time, parts[1].decode("ascii", errors="replace"), parts[2] != b"P", parts[3] if len(parts) == 4 else b""


def _cut_point(text: bytes, limit: int) -> int:
    """Where to cut `text` to at most `limit` bytes without splitting a UTF-8 character."""
    cut = limit
    while cut > 0 and text[cut] & 0xC0 == 0x80:  # a continuation byte: back to the lead byte
        cut -= 1
    return cut or limit


def _line(time: datetime, stream: str, text: bytes, partial: bool) -> LogLine:
    return LogLine(time=time, stream=stream, line=text.decode("utf-8", errors="replace"), partial=partial)


async def read_log(
    path: Path,
    tail: int | None = None,
    since: datetime | None = None,
    follow: Callable[[], Awaitable[bool]] | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> AsyncIterator[LogLine]:
    """The log's lines after `since` (only the last `tail` of what is on disk now), then
    new ones for as long as `follow()` says the writer is alive. Lines longer than
    `max_line_bytes` come in parts marked `partial`; a last line the writer left without
    a newline (a partial record) is given, marked `partial`, when the log ends."""
    pending: dict[str, tuple[datetime, bytes]] = {}
    last: collections.deque[LogLine] | None = collections.deque(maxlen=tail) if tail is not None else None
    read_limit = max_line_bytes + _HEADER_ROOM

    def wanted(line: LogLine) -> LogLine | None:
        if since is not None and line.time <= since:
            return None
        if last is not None:
            last.append(line)
            return None
        return line

    def joined(time: datetime, stream: str, full: bool, text: bytes) -> list[LogLine]:
        """The lines a record completes: parts of at most `max_line_bytes`, the rest held."""
        start, held = pending.pop(stream, (time, b""))
        held += text
        lines: list[LogLine] = []
        while len(held) > max_line_bytes:
            cut = _cut_point(held, max_line_bytes)
            lines.append(_line(start, stream, held[:cut], partial=True))
            held, start = held[cut:], time
        if full:
            lines.append(_line(start, stream, held, partial=False))
        else:
            pending[stream] = (start, held)
        return [line for line in map(wanted, lines) if line is not None]

    def ending() -> list[LogLine]:
        held = [_line(time, stream, text, partial=True) for stream, (time, text) in pending.items() if text]
        pending.clear()
        lines = [line for line in (wanted(h) for h in held) if line is not None]
        return [*(last or []), *lines]

    while True:
        if not await asyncio.to_thread(path.exists):
            if follow is None or not await follow():
                for line in ending():
                    yield line
                return
            await asyncio.sleep(FOLLOW_POLL_SECONDS)
            continue
        # Closed on the loop, without an await, however the reading ends: a reader cancelled
        # (a follow whose client went away) is cancelled at every await, and a close that
        # awaited would leave the file to the garbage collector. Closing a file opened for
        # reading writes nothing, so it does not wait for the disk.
        with await asyncio.to_thread(_open, path) as file:
            inode = (await asyncio.to_thread(os.stat, path)).st_ino
            position = 0
            skipping = False  # inside a record longer than any conmon writes: its rest is dropped
            while True:
                raw = await asyncio.to_thread(file.readline, read_limit)
                complete = raw.endswith(b"\n")
                if complete or len(raw) == read_limit:
                    position += len(raw)
                    if skipping:
                        skipping = not complete
                        continue
                    skipping = not complete
                    record = _parse(raw)
                    if record is None:
                        continue
                    time, stream, full, text = record
                    for line in joined(time, stream, full and complete, text):
                        yield line
                    if not complete:  # served as far as read, marked partial; the rest is dropped
                        start, held = pending.pop(stream)
                        cut_short = wanted(_line(start, stream, held, partial=True))
                        if cut_short is not None:
                            yield cut_short
                    continue
                # The end of this file for now (maybe in the middle of a record being written).
                if last is not None:  # the tail of what was on disk is complete
                    for line in last:
                        yield line
                    last = None
                if await _replaced(path, inode, position):
                    break  # rotated or truncated by conmon: go on with the file now at `path`
                if follow is None or not await follow():
                    if await _replaced(path, inode, position):
                        break  # the writer ended right after rotating: read the new file too
                    for line in ending():
                        yield line
                    return
                await asyncio.sleep(FOLLOW_POLL_SECONDS)
                file.seek(position)  # no I/O: it drops the buffer, the next read goes to the file


def _open(path: Path) -> BufferedReader:
    return path.open("rb")


async def _replaced(path: Path, inode: int, position: int) -> bool:
    """Whether the file at `path` is no longer the one read (renamed over) or was cut."""
    try:
        current = await asyncio.to_thread(os.stat, path)
    except FileNotFoundError:
        return False
    return current.st_ino != inode or current.st_size < position
