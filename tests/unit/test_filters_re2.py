"""`~=` is RE2 (Go's regexp syntax and semantics, linear time): what RE2 refuses is a
400 naming the filter, the position in it and the rule; what it accepts matches as Go's
`MatchString` does."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from app.errors import CargoholdError, ErrorKind
from app.filters import FieldGetter, off_loop, parse


def matches(expr: str, value: str | None) -> bool:
    def field(path: Sequence[str]) -> str | None:
        return value if list(path) == ["v"] else None

    return parse([expr]).matches(field)


@pytest.mark.parametrize(
    ("expr", "value", "expected"),
    [
        pytest.param("v~=b", "abc", True, id="searches-anywhere"),
        pytest.param("v~=^b", "abc", False, id="anchored"),
        pytest.param('v~="c$"', "abc\n", False, id="dollar-is-end-of-text-as-go"),
        pytest.param('v~="(?m)c$"', "abc\n", True, id="multiline-flag"),
        pytest.param(r'v~="\\z"', "abc", True, id="backslash-z"),
        pytest.param('v~="(?i)ABC"', "abc", True, id="case-flag"),
        pytest.param(r'v~="\\pL+"', "élan", True, id="unicode-class"),
        pytest.param('v~="^.{4}$"', "élan", True, id="dot-is-a-character-not-a-byte"),
        pytest.param('v~="a.c"', "a\nc", False, id="dot-is-not-newline"),
        pytest.param('v~="(?s)a.c"', "a\nc", True, id="s-flag"),
        pytest.param('v~="x"', "\ud800x", True, id="lone-surrogate-in-value"),
        pytest.param("v~=^$", None, True, id="absent-reads-empty"),
    ],
)
def test_go_semantics(expr: str, value: str | None, expected: bool) -> None:
    assert matches(expr, value) is expected


@pytest.mark.parametrize(
    ("expr", "position", "says"),
    [
        pytest.param(r"v~=(a)\1", 6, "invalid escape sequence", id="backreference"),
        pytest.param('v~="x(?=y)"', 5, "invalid perl operator", id="lookahead"),
        pytest.param('v~="(?<!y)x"', 4, "invalid perl operator", id="lookbehind"),
        pytest.param('v~="a{1001}"', 5, "invalid repetition size", id="count-over-1000"),
        pytest.param('v~="(a{1,1000}){1,1000}"', 6, "invalid repetition size", id="counts-multiply"),
        pytest.param('v~="' + ".{1000}" * 100 + '"', 3, "pattern too large", id="program-too-large"),
        pytest.param(r"v~=\Z", 3, "invalid escape sequence", id="python-Z"),
        pytest.param("v~=a**", 4, "bad repetition operator", id="double-star"),
    ],
)
def test_what_re2_refuses_is_a_bad_filter(expr: str, position: int, says: str) -> None:
    with pytest.raises(CargoholdError) as caught:
        parse([expr])
    assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
    detail = caught.value.detail
    assert detail.startswith(f"filter 1, position {position}: invalid regular expression (RE2 syntax): {says}")


def test_catastrophic_backtracking_patterns_run_in_linear_time() -> None:
    """Python's re took over 5 s for 28 characters of this; RE2 reads 4,000 at once."""
    value = "a" * 4000 + "!"
    started = time.perf_counter()
    for expr in ('v~="^(a+)+$"', 'v~="^(a|aa)+$"', 'v~="^(a*)*$"', 'v~="^(.*a){25}$"'):
        assert not matches(expr, value)
    assert time.perf_counter() - started < 0.5


@pytest.mark.anyio
async def test_a_scan_past_its_time_budget_is_a_bad_filter() -> None:
    """Counted repeats are linear but slow (~0.1 s per 4 KB value): a scan stops at its budget."""
    slow = parse(['v~="(.{1,1000}.{1,1000}.{1,1000})$"'])
    values = ["x" * 4096 + str(n) for n in range(200)]

    def field(value: str) -> FieldGetter:
        return lambda path: value

    started = time.perf_counter()
    with pytest.raises(CargoholdError) as caught:
        await off_loop(values, lambda value: slow.matches(field(value)), budget=0.2)
    assert time.perf_counter() - started < 2.0, "the scan ran past its budget"
    assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
    assert "took more than 0.2 s" in caught.value.detail
    # Within its budget the same scan answers: the cheap pattern over the same values.
    cheap = parse(['v~="9$"'])
    kept = await off_loop(values, lambda value: cheap.matches(field(value)), budget=0.2)
    assert kept == [value for value in values if value.endswith("9")]
