"""Reading conmon's CRI-format logs: `<RFC 3339 time> <stdout|stderr> <P|F> <text>`.

`P` marks a partial line continued by the next record, `F` a full one; they are joined.
Files are read line by line (never whole), so a task that printed 100 MB costs the
daemon a buffer, not 100 MB; `tail` keeps only the last N lines. `follow` keeps reading
while the task runs, and starts over when conmon truncated the file at its size cap.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path

import aiofiles
import aiofiles.os

from ..models import LogLine

FOLLOW_POLL_SECONDS = 0.1


def parse_cri_record(raw: str) -> tuple[datetime, str, bool, str] | None:
    """(time, stream, is_full_line, text), or None for a line that is not a CRI record."""
    parts = raw.rstrip("\n").split(" ", 3)
    if len(parts) < 3:
        return None
    try:
        time = datetime.fromisoformat(parts[0])
    except ValueError:
        return None
    return time, parts[1], parts[2] != "P", parts[3] if len(parts) == 4 else ""


async def read_log(
    path: Path,
    tail: int | None = None,
    since: datetime | None = None,
    follow: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncIterator[LogLine]:
    """The log's lines after `since` (only the last `tail` of what is on disk now), then
    new ones for as long as `follow()` says the writer is alive. A last line the writer
    left without a newline (a partial record) is given when the log ends."""
    pending: dict[str, tuple[datetime, str]] = {}
    last: collections.deque[LogLine] | None = collections.deque(maxlen=tail) if tail is not None else None

    def wanted(line: LogLine) -> LogLine | None:
        if since is not None and line.time <= since:
            return None
        if last is not None:
            last.append(line)
            return None
        return line

    def ending() -> list[LogLine]:
        held = [LogLine(time=time, stream=stream, line=text) for stream, (time, text) in pending.items()]
        pending.clear()
        lines = [line for line in (wanted(h) for h in held) if line is not None]
        return [*(last or []), *lines]

    while True:
        if not await aiofiles.os.path.exists(path):
            if follow is None or not await follow():
                for line in ending():
                    yield line
                return
            await asyncio.sleep(FOLLOW_POLL_SECONDS)
            continue
        async with aiofiles.open(path, encoding="utf-8", errors="replace") as file:
            inode = (await aiofiles.os.stat(path)).st_ino
            position = 0
            while True:
                raw = await file.readline()
                if raw.endswith("\n"):
                    position += len(raw.encode())
                    record = parse_cri_record(raw)
                    if record is None:
                        continue
                    time, stream, full, text = record
                    text = pending.pop(stream, (time, ""))[1] + text
                    if not full:
                        pending[stream] = (time, text)
                        continue
                    kept = wanted(LogLine(time=time, stream=stream, line=text))
                    if kept is not None:
                        yield kept
                    continue
                # The end of this file for now.
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
                await file.seek(position)


async def _replaced(path: Path, inode: int, position: int) -> bool:
    """Whether the file at `path` is no longer the one read (renamed over) or was cut."""
    try:
        current = await aiofiles.os.stat(path)
    except FileNotFoundError:
        return False
    return current.st_ino != inode or current.st_size < position
