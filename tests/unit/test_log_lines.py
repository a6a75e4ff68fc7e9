"""read_log on CRI files as conmon writes them: partial records joined up to the line
bound, longer lines served in parts marked partial, UTF-8 never split, reads bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.models import LogLine
from app.runtime.logs import read_log

pytestmark = pytest.mark.anyio

T = "2026-12-04T10:00:00.000000000Z"


def record(text: str | bytes, tag: str = "F", stream: str = "stdout", time: str = T) -> bytes:
    body = text.encode() if isinstance(text, str) else text
    return f"{time} {stream} {tag} ".encode() + body + b"\n"


async def read(path: Path, **kwargs: object) -> list[LogLine]:
    return [line async for line in read_log(path, **kwargs)]  # type: ignore[arg-type]


async def test_partial_records_join_up_to_the_bound_then_come_in_parts(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    # 25 records of 8 KiB (conmon's buffer) with no newline, then the end of the line.
    log.write_bytes(b"".join(record("x" * 8192, "P") for _ in range(25)) + record("end") + record("next"))
    lines = await read(log, max_line_bytes=65536)
    assert [(len(line.line), line.partial) for line in lines] == [
        (65536, True), (65536, True), (65536, True), (8192 * 25 - 3 * 65536 + 3, False), (4, False),
    ]
    assert "".join(line.line for line in lines[:4]) == "x" * 8192 * 25 + "end"
    assert lines[-1].line == "next"


async def test_a_line_under_the_bound_is_one_line(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_bytes(record("a" * 30000, "P") + record("b" * 20000))
    (line,) = await read(log, max_line_bytes=65536)
    assert line.line == "a" * 30000 + "b" * 20000 and not line.partial


async def test_parts_never_split_a_utf8_character(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_bytes(record("é" * 100))  # 200 bytes
    lines = await read(log, max_line_bytes=33)
    assert all(len(line.line.encode()) <= 33 for line in lines)
    assert "".join(line.line for line in lines) == "é" * 100
    assert [line.partial for line in lines] == [True] * (len(lines) - 1) + [False]


async def test_an_unfinished_last_line_is_given_marked_partial(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_bytes(record("one") + record("no newline", "P"))
    lines = await read(log)
    assert [(line.line, line.partial) for line in lines] == [("one", False), ("no newline", True)]


async def test_a_record_longer_than_any_read_is_cut(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    # Not something conmon writes: one record of 1 MiB. It is read in bounded pieces.
    log.write_bytes(record("y" * (1 << 20)) + record("after"))
    lines = await read(log, max_line_bytes=1000)
    assert all(len(line.line) <= 1000 for line in lines)
    assert lines[-1].line == "after" and not lines[-1].partial
    assert 0 < len(lines) < 10


async def test_tail_counts_parts(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_bytes(record("a" * 250) + record("b"))
    lines = await read(log, tail=2, max_line_bytes=100)
    assert [(line.line, line.partial) for line in lines] == [("a" * 50, False), ("b", False)]
