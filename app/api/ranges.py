"""HTTP byte ranges (RFC 9110 section 14): which parts of a representation a `Range` header asks for.

    parse_ranges("bytes=0-99", 1000)         -> [ByteRange(0, 100)]
    parse_ranges("bytes=-100", 1000)         -> [ByteRange(900, 1000)]      a suffix: the last 100
    parse_ranges("bytes=900-", 1000)         -> [ByteRange(900, 1000)]      open: to the end
    parse_ranges("bytes=0-9,5-19,50-", 1000) -> [ByteRange(0, 20), ByteRange(50, 1000)]  coalesced
    parse_ranges("bytes=2000-", 1000)        -> []      none satisfiable: 416
    parse_ranges("items=0-1", 1000)          -> None    ignored: the whole representation

As RFC 9110 allows, a header this module cannot honour is ignored rather than refused (the
answer is the whole content, 200): another unit than `bytes`, a malformed range set (a range
whose last byte precedes its first is malformed too), or more than MAX_RANGES ranges (the
many-small-ranges abuse of section 14.2). Overlapping and adjacent ranges are coalesced, and
a set of which no range is satisfiable is `[]`, the 416 case. No HTTP framework here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Ranges honoured in one request; past this the header is ignored (RFC 9110 section 14.2
# lets a server ignore a Range of many small or overlapping ranges).
MAX_RANGES = 16
_SPEC = re.compile(r"(?:([0-9]+)-([0-9]*)|-([0-9]+))")
# Positions longer than this many digits are past the end of any blob (and int() of a
# very long string is refused by Python).
_MAX_DIGITS = 19


@dataclass(frozen=True)
class ByteRange:
    """Bytes [start, end) of a representation."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{size}"


def _position(digits: str) -> int:
    return int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS


def parse_ranges(header: str | None, size: int) -> list[ByteRange] | None:
    """The satisfiable ranges of `header` for `size` bytes, sorted and coalesced; `[]` if none
    is satisfiable (answer 416); None to ignore the header (answer the whole content)."""
    if header is None:
        return None
    unit, equals, spec_set = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    specs = [spec.strip(" \t") for spec in spec_set.split(",")]
    # Empty list elements are allowed by the list syntax (section 5.6.1), but one range is needed.
    specs = [spec for spec in specs if spec]
    if not specs or len(specs) > MAX_RANGES:
        return None
    wanted: list[ByteRange] = []
    for spec in specs:
        match = _SPEC.fullmatch(spec)
        if match is None:
            return None
        first, last, suffix = match.groups()
        if suffix is not None:
            length = _position(suffix)
            if length == 0:
                continue  # unsatisfiable
            if size == 0:
                return None  # an empty representation: nothing to cut, send it whole
            wanted.append(ByteRange(max(size - length, 0), size))
            continue
        start = _position(first)
        end = size if not last else _position(last) + 1
        if last and end <= start:
            return None  # last-pos before first-pos: an invalid range-spec
        if start >= size:
            continue  # unsatisfiable
        wanted.append(ByteRange(start, min(end, size)))
    return _coalesce(wanted)


def _coalesce(ranges: list[ByteRange]) -> list[ByteRange]:
    merged: list[ByteRange] = []
    for byte_range in sorted(ranges, key=lambda r: r.start):
        if merged and byte_range.start <= merged[-1].end:
            merged[-1] = ByteRange(merged[-1].start, max(merged[-1].end, byte_range.end))
        else:
            merged.append(byte_range)
    return merged
