"""app.filters: containerd's filter syntax, matched against plain nested dicts."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pytest

from app.errors import CargoholdError, ErrorKind
from app.filters import MATCH_ALL, FieldGetter, parse


def field_of(d: dict[str, Any]) -> FieldGetter:
    """Walk nested dicts along the path; a missing key or a non-string leaf is absent."""

    def field(path: Sequence[str]) -> str | None:
        node: Any = d
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node if isinstance(node, str) else None

    return field


WEB: dict[str, Any] = {
    "id": "web",
    "image": "docker.io/library/nginx:1.25",
    "labels": {"env": "prod", "a.b": "x", "tier": "", "example.com/team": "core"},
}
DB: dict[str, Any] = {"id": "db", "image": "docker.io/library/postgres:16", "labels": {"env": "dev"}}
TMP: dict[str, Any] = {"id": "tmp", "image": "busybox", "labels": {}}
CORPUS = [WEB, DB, TMP]


def matching(exprs: Sequence[str]) -> list[str]:
    flt = parse(exprs)
    return [c["id"] for c in CORPUS if flt.matches(field_of(c))]


@pytest.mark.parametrize(
    ("exprs", "expected"),
    [
        pytest.param([], ["web", "db", "tmp"], id="no-filter-matches-all"),
        pytest.param(["id==web"], ["web"], id="equal"),
        pytest.param(['id=="web"'], ["web"], id="equal-quoted"),
        pytest.param(["id==we"], [], id="equal-is-whole-value"),
        pytest.param(["labels.env"], ["web", "db"], id="present"),
        pytest.param(["labels.tier"], ["web"], id="present-with-empty-value"),
        pytest.param(["labels.env!=prod"], ["db", "tmp"], id="not-equal-absent-matches"),
        pytest.param(['labels.env!=""'], ["web", "db"], id="not-equal-empty-needs-value"),
        pytest.param(['labels."a.b"==x'], ["web"], id="quoted-key-with-dot"),
        pytest.param(["labels.a.b==x"], [], id="unquoted-dots-split-path"),
        pytest.param(['labels."example.com/team"==core'], ["web"], id="quoted-key-slash"),
        pytest.param(['labels.tier==""'], ["web"], id="equal-empty"),
        pytest.param(["labels.tier==x"], [], id="equal-needs-presence"),
        pytest.param(["image==docker.io/library/nginx:1.25"], ["web"], id="bare-punct"),
        pytest.param(["image~=postgres"], ["db"], id="regex-searches"),
        pytest.param(["image~=^busybox$"], ["tmp"], id="regex-anchored"),
        pytest.param([r"image~=\d+$"], ["web", "db"], id="regex-bare-backslash"),
        pytest.param([r'image~="\\d+$"'], ["web", "db"], id="regex-quoted-escape"),
        pytest.param(["image~=/[a-z]{5,8}:/"], ["web", "db"], id="regex-slash-comma"),
        pytest.param([r"image~=/library\/n/"], ["web"], id="regex-slash-escape"),
        pytest.param(["image~=|library/p|"], ["db"], id="regex-pipe-quoted"),
        pytest.param(["labels.env~=^$"], ["tmp"], id="regex-absent-reads-empty"),
        pytest.param(["id==web", "id==db"], ["web", "db"], id="items-or"),
        pytest.param(["id==web,labels.env==dev"], [], id="comma-and-none"),
        pytest.param(["id==db,labels.env==dev"], ["db"], id="comma-and"),
        pytest.param(["id==web,labels.env", "id==tmp"], ["web", "tmp"], id="or-of-ands"),
        pytest.param(["  id == web ,  labels . env  "], ["web"], id="whitespace"),
        pytest.param(["id\t!=\tweb"], ["db", "tmp"], id="tab-whitespace"),
        pytest.param([r'labels.tier!="\x63ore"'], ["web", "db", "tmp"], id="hex-no"),
        pytest.param([r'labels."example.com/team"=="\x63ore"'], ["web"], id="hex"),
        pytest.param([r'labels."example.com/team"=="\u0063ore"'], ["web"], id="u"),
        pytest.param([r'labels."example.com/team"=="\143ore"'], ["web"], id="octal"),
        pytest.param([r'id=="\xe7\x89\x9b"'], [], id="hex-bytes-utf8"),
        pytest.param(["id!=牛"], ["web", "db", "tmp"], id="unicode-value"),
    ],
)
def test_matches(exprs: list[str], expected: list[str]) -> None:
    assert matching(exprs) == expected


@pytest.mark.parametrize(
    ("expr", "paths"),
    [
        pytest.param("id", [("id",)], id="one"),
        pytest.param('labels."a.b"', [("labels", "a.b")], id="quoted"),
        pytest.param("a . b.c", [("a", "b", "c")], id="spaced-dots"),
        pytest.param('"lead q".post', [("lead q", "post")], id="quoted-first"),
        pytest.param('labels.""', [("labels", "")], id="empty-quoted"),
        pytest.param("x-1._y", [("x-1", "_y")], id="dash-digit-underscore"),
        pytest.param(r'l."q\"b\\s"', [("l", 'q"b\\s')], id="escaped-quote"),
        pytest.param("a==1,b~=2,c!=3", [("a",), ("b",), ("c",)], id="several"),
    ],
)
def test_field_paths(expr: str, paths: list[tuple[str, ...]]) -> None:
    asked: list[tuple[str, ...]] = []

    def field(path: Sequence[str]) -> str | None:
        asked.append(tuple(path))
        return {"a": "1", "b": "2"}.get(path[0], "")  # every selector holds

    assert parse([expr]).matches(field)
    assert asked == paths


def test_decodes_go_escapes() -> None:
    value = {"v": '\a\b\f\n\r\t\v\\"é牛A'}
    flt = parse([r'v=="\a\b\f\n\r\t\v\\\"\u00e9\U0000725B\101"'])
    assert flt.matches(field_of(value))
    assert not flt.matches(field_of({"v": r"\a"}))


def test_no_filters_is_match_all() -> None:
    assert parse([]) is MATCH_ALL
    assert MATCH_ALL.matches(lambda path: None)


def test_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError):
        parse("id==web")


def test_error_detail_shape() -> None:
    with pytest.raises(CargoholdError) as caught:
        parse(["labels.a=b"])
    assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
    assert caught.value.detail == (
        "filter 1, position 8: expected operator ==, != or ~= after the field path, "
        "found '=' in \"labels.a=b\" (labels.a>|=|<b); write == to test equality"
    )


@pytest.mark.parametrize(
    ("exprs", "number", "position", "marked", "says"),
    [
        pytest.param([""], 1, 0, "(>||<)", "empty filter", id="empty"),
        pytest.param(["id==web", "  "], 2, 0, "(>| |< )", "empty filter", id="blank"),
        pytest.param(["labels.a=b"], 1, 8, "(labels.a>|=|<b)", "operator", id="single-eq"),
        pytest.param(["id==web", "id=x"], 2, 2, "(id>|=|<x)", "operator", id="second"),
        pytest.param(["id===x"], 1, 2, "(id>|=|<==x)", "'==='", id="triple-eq"),
        pytest.param(["id==!x"], 1, 2, "(id>|=|<=!x)", "starts with", id="op-swallows"),
        pytest.param(["a b"], 1, 2, "(a >|b|<)", "found 'b'", id="space-in-field"),
        pytest.param(["a\x00b"], 1, 1, "(a>|\x00|<b)", r"'\x00'", id="null"),
        pytest.param(["labels.ns/key==v"], 1, 9, "(labels.ns>|/|<key==v)", 'labels."', id="slash-key"),
        pytest.param(["name==foo,"], 1, 10, "(name==foo,>||<)", "the end", id="trailing-comma"),
        pytest.param(["labels."], 1, 7, "(labels.>||<)", "field name", id="trailing-dot"),
        pytest.param(["labels.?x"], 1, 7, "(labels.>|?|<x)", "found '?'", id="bad-field"),
        pytest.param(["labels.|foo|==x"], 1, 7, "(labels.>|||<foo|==x)", "field name", id="pipe-key"),
        pytest.param(["牛==x"], 1, 0, "(>|牛|<==x)", "field name", id="unicode-field"),
        pytest.param(["image~=,id==x"], 1, 7, "(image~=>|,|<id==x)", "value after ~=", id="no-value"),
        pytest.param(["id=="], 1, 4, "(id==>||<)", 'write ""', id="no-value-end"),
        pytest.param(["topic==/tasks/x"], 1, 7, "(topic==>|/|<tasks/x)", '=="/tasks/x"', id="slash-eq"),
        pytest.param(["id!=|x|"], 1, 4, "(id!=>|||<x|)", "after ~= only", id="pipe-ne"),
        pytest.param(["id==.x"], 1, 4, "(id==>|.|<x)", "can't start with '.'", id="dot-value"),
        pytest.param(["a==b c"], 1, 5, "(a==b >|c|<)", "expected ','", id="two-values"),
        pytest.param(['a=="b"c'], 1, 6, '(a=="b">|c|<)', "expected ','", id="after-quote"),
        pytest.param(['labels."abc==x'], 1, 7, '(labels.>|"|<abc==x)', "unterminated", id="open-quote"),
        pytest.param(['a=="x\ny"'], 1, 3, '(a==>|"|<x\ny")', "unterminated", id="newline-in-quote"),
        pytest.param(["a~=/x"], 1, 3, "(a~=>|/|<x)", "close it with /", id="open-slash"),
        pytest.param(['a=="x\\'], 1, 3, '(a==>|"|<x\\)', "unterminated", id="trailing-backslash"),
        pytest.param([r'l."\g"'], 1, 3, r'(l.">|\|<g")', r"invalid escape \g", id="bad-escape"),
        pytest.param([r"a~=/\d/"], 1, 4, r"(a~=/>|\|<d/)", r"write \\", id="regex-escape"),
        pytest.param([r'a=="\/"'], 1, 4, r'(a==">|\|</")', r"escape \/", id="slash-escape-in-dq"),
        pytest.param([r'l."\xaz"'], 1, 3, r'(l.">|\|<xaz")', "incomplete", id="short-hex"),
        pytest.param([r'a=="\400"'], 1, 4, r'(a==">|\|<400")', "above", id="octal-range"),
        pytest.param([r'a=="\uD800"'], 1, 4, r'(a==">|\|<uD800")', "code point", id="surrogate"),
        pytest.param([r'a=="\xff"'], 1, 3, r'(a==>|"|<\xff")', "UTF-8", id="bad-utf8"),
        pytest.param(["image~=[abc"], 1, 7, "(image~=>|[|<abc)", "missing ]", id="regex"),
        pytest.param(["image~=ab[c"], 1, 9, "(image~=ab>|[|<c)", "missing ]", id="regex-offset"),
        pytest.param(["image~=ab(c"], 1, 7, "(image~=>|a|<b(c)", "missing )", id="regex-whole"),
        pytest.param(['image~="a[b"'], 1, 9, '(image~="a>|[|<b")', "missing ]", id="regex-quoted"),
        pytest.param([r'i~="\\d("'], 1, 3, r'(i~=>|"|<\\d(")', "missing )", id="regex-escaped"),
    ],
)
def test_errors(exprs: list[str], number: int, position: int, marked: str, says: str) -> None:
    with pytest.raises(CargoholdError) as caught:
        parse(exprs)
    detail = caught.value.detail
    assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
    assert re.match(r"filter (\d+), position (\d+): ", detail)
    assert detail.startswith(f"filter {number}, position {position}: "), detail
    assert marked in detail, detail
    assert says in detail, detail
