r"""Filters: containerd's filter syntax (`pkg/filters`): parse once, match many times.

A filter is a list of selectors joined by ``,``; an object matches when every selector
does. A selector is a field path, optionally followed by an operator and a value::

    id==web                          field ``id`` equals "web"
    labels.env                       label ``env`` is present, whatever its value
    labels.env!=prod                 ``env`` is not "prod", or there is no ``env`` label
    image~=^docker\.io/library/      ``image`` matches a regular expression
    labels."example.com/tier"==db    a double-quoted component holds any characters
    id==web,labels.env               both must hold
    topic~="^/tasks/"                a quoted value may hold anything but a newline

Repeat the filter (``?filter=id==web&filter=id==db``) to OR them; no filter matches
everything. Whitespace between tokens is ignored.

- A field path is components joined by ``.``. A bare component is ASCII letters,
  digits, ``_`` and ``-``; anything else goes in double quotes: ``labels."a.b"`` is
  the path ``["labels", "a.b"]``, while ``labels.a.b`` is ``["labels", "a", "b"]``.
- A bare value runs up to whitespace or ``,`` and may not start with one of
  ``. = ! ~ / | "``; double-quote any other value. Quotes take Go's escapes
  (``\\ \" \n \t \x41 \101 \u00e9``), nothing else, so a regex ``\d`` is ``"\\d"``
  quoted, or just ``\d`` bare.
- After ``~=`` a value may also be quoted ``/.../`` or ``|...|`` (escape the delimiter
  as ``\/`` or ``\|``), which keeps ``,`` and ``"`` inside: ``name~=/[a-z]{1,3}/``.
- ``==`` equal; ``!=`` not equal; ``~=`` a regular expression in RE2 syntax (that of
  Go's ``regexp``, which containerd uses), searched anywhere in the value (Go's
  ``MatchString``); ``$`` is the end of the value, as in Go. RE2 runs in time linear in
  the value, so no pattern can stall a scan. What RE2 refuses is a bad filter:
  backreferences (``(a)\1``), lookaround (``(?=x)``), a repetition above ``{1000}``
  (nested ones multiply), a program beyond RE2's default 8 MiB budget.
- As in containerd, an absent field reads as ``""`` for ``!=`` and ``~=``:
  ``labels.env!=prod`` keeps objects without an ``env`` label, ``labels.env!=""`` keeps
  only those with a non-empty one.

Grammar::

    filter    := selector ("," selector)*
    selector  := fieldpath (operator value)?
    fieldpath := field ("." field)*
    field     := [A-Za-z0-9_-]+ | "..."
    operator  := "==" | "!=" | "~="
    value     := bare | "..." | /.../ | |...|      (the last two after ~= only)

A bad filter raises ``CargoholdError(INVALID_ARGUMENT)`` naming the filter (1-based),
the 0-based character position, what was expected, and the input marked there::

    filter 1, position 8: expected operator ==, != or ~= after the field path, found '='
    in "labels.a=b" (labels.a>|=|<b); write == to test equality

Objects are read through a ``FieldGetter``, ``field(path) -> str | None`` (None when
absent), which lives with each domain type; this module knows no domain type. A caller
matching many objects does it in `off_loop`, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import re2

from app.errors import invalid

FieldGetter = Callable[[Sequence[str]], str | None]
Equality = tuple[tuple[str, ...], str]
"""A field path and the value an `==` selector requires it to have."""

_FIELD = re.compile(r"[A-Za-z0-9_-]+")  # containerd's scanner, wider than its grammar
_OPERATOR = re.compile(r"[=!~]+")  # scanned greedily, as containerd: "==!" is one token
_OPERATORS = ("==", "!=", "~=")
_NOT_BARE_START = (".", "=", "!", "~", "/", "|")
# Go's string escapes: one letter, or \xFF (a byte), \uFFFF, \UFFFFFFFF, \377 (a byte).
_ESCAPES = dict(zip("abfnrtv\\", "\a\b\f\n\r\t\v\\", strict=True))
_HEX = "[0-9A-Fa-f]"
_NUMERIC_ESCAPE = re.compile(f"x{_HEX}{{2}}|u{_HEX}{{4}}|U{_HEX}{{8}}|[0-7]{{3}}")
_QUOTE_HINT = 'double-quote a component with other characters: labels."example.com/key"'


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # a bad pattern is the client's 400, not a line in our log
    options.never_capture = True  # a filter asks whether, never where: no submatches to track
    return options


_RE2_OPTIONS = _re2_options()

# Threads of their own for matching many objects: RE2 releases the GIL as it matches, so
# the event loop keeps serving; two threads bound how much of the GIL filters take from
# it, and a long scan never holds a thread of the default executor (mounts, teardown).
_MATCHING = ThreadPoolExecutor(max_workers=2, thread_name_prefix="filters")
_T = TypeVar("_T")


# A scan's time budget. RE2 is linear in the value, but a pattern of counted repeats
# (`(.{1,1000}.{1,1000}.{1,1000})$`) still costs ~0.1 s per 4 KB value: over 10,000 such
# labels one list would hold a filter thread for a quarter of an hour, and two would
# hold up every other regex-filtered list. Past the budget the scan stops with a 400.
SCAN_SECONDS = 5.0


def _scan(items: Iterable[_T], keep: Callable[[_T], bool], budget: float) -> list[_T]:
    deadline = time.monotonic() + budget
    kept = []
    for item in items:
        if keep(item):
            kept.append(item)
        if time.monotonic() > deadline:
            raise invalid(
                f"the filter's regular expressions took more than {budget:g} s over these objects; "
                "simplify the pattern (fewer counted repeats) or narrow the list with == selectors"
            )
    return kept


async def off_loop(items: Iterable[_T], keep: Callable[[_T], bool], budget: float = SCAN_SECONDS) -> list[_T]:
    """The items `keep` accepts, in order, matched on the filters' threads (a scan over
    many objects). Raises INVALID_ARGUMENT once the scan has taken `budget` seconds."""
    return await asyncio.get_running_loop().run_in_executor(_MATCHING, _scan, items, keep, budget)

# What to write instead, for what RE2 refuses that Python's or PCRE's syntax allows.
_RE2_HINTS = {
    "invalid escape sequence": r"RE2 has no backreferences (\1) and writes the end of text \z, not \Z",
    "invalid perl operator": "RE2 has no lookahead or lookbehind (see RE2's syntax page)",
    "invalid repetition size": "a count is at most 1000, and nested counts multiplied too",
    "pattern too large - compile failed": "the pattern compiles to more than RE2's 8 MiB budget; simplify it",
}


@dataclass(frozen=True, slots=True)
class _Selector:
    path: tuple[str, ...]
    op: str  # "" tests presence
    value: str = ""
    regex: re2._Regexp[bytes] | None = None

    def matches(self, field: FieldGetter) -> bool:
        got = field(self.path)
        if not self.op:
            return got is not None
        if self.op == "==":
            return got is not None and got == self.value
        text = "" if got is None else got  # containerd reads an absent field as ""
        if self.regex is not None:
            # Bytes, as RE2 matches them: a lone surrogate (JSON allows "\ud800") passes
            # through instead of failing the encoding.
            return self.regex.search(text.encode("utf-8", "surrogatepass")) is not None
        return text != self.value


@dataclass(frozen=True, slots=True)
class Filter:
    """Parsed filters: an object matches when all selectors of any alternative do."""

    _alternatives: tuple[tuple[_Selector, ...], ...]

    def matches(self, field: FieldGetter) -> bool:
        return any(all(s.matches(field) for s in sels) for sels in self._alternatives)

    async def select(self, items: Sequence[_T], field_of: Callable[[_T], FieldGetter]) -> list[_T]:
        """The items this filter matches, in order. With a regular expression among the
        selectors they are matched `off_loop`, as a pattern over long values may take
        milliseconds each; plain comparisons are cheaper than the trip and stay here."""
        if not any(s.regex is not None for sels in self._alternatives for s in sels):
            return [item for item in items if self.matches(field_of(item))]
        return await off_loop(items, lambda item: self.matches(field_of(item)))

    def equalities(self) -> tuple[tuple[Equality, ...], ...]:
        """Per alternative, the `==` selectors' (path, value) pairs: every object that
        alternative matches has each field present and equal to its value.

        This lets a store narrow its candidates (an index, a SQL ``WHERE``) before
        `matches` decides: the pairs are necessary, never sufficient, since the other
        selectors are left out. An alternative with no pairs can match anything."""
        return tuple(
            tuple((s.path, s.value) for s in sels if s.op == "==") for sels in self._alternatives
        )


MATCH_ALL = Filter(((),))


def parse(exprs: Sequence[str]) -> Filter:
    """Parse repeatable filter strings: the items are ORed; inside one, ',' ANDs.

    An empty sequence matches everything. Raises CargoholdError(INVALID_ARGUMENT) on a
    bad expression (an empty string included); regular expressions are compiled here.
    """
    if isinstance(exprs, str):
        raise TypeError("parse() takes a sequence of filter strings, not one string")
    if not exprs:
        return MATCH_ALL
    return Filter(tuple(_Parser(text, n).filter() for n, text in enumerate(exprs, 1)))


def _show(ch: str) -> str:
    if not ch:
        return "the end of the filter"
    return f"'{ch}'" if ch.isprintable() else repr(ch)


def _is_bare(ch: str) -> bool:
    return ch != "," and ch.isprintable() and not ch.isspace()


class _Parser:
    """Recursive descent over one filter string; `pos` indexes the next character."""

    def __init__(self, text: str, number: int) -> None:
        self.text = text
        self.number = number
        self.pos = 0

    def fail(self, pos: int, problem: str, hint: str = "") -> NoReturn:
        text = self.text
        marked = f"{text[:pos]}>|{text[pos : pos + 1]}|<{text[pos + 1 :]}"
        quoted = json.dumps(text, ensure_ascii=False)
        where = f"filter {self.number}, position {pos}"
        detail = f"{where}: {problem} in {quoted} ({marked})"
        raise invalid(f"{detail}; {hint}" if hint else detail)

    def peek(self) -> str:
        """Skip whitespace; return the next character, or "" at the end."""
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1
        return self.text[self.pos : self.pos + 1]

    def filter(self) -> tuple[_Selector, ...]:
        if not self.text.strip():
            self.fail(0, "empty filter", "give a selector such as id==web, or drop it")
        selectors = [self.selector()]
        while self.peek() == ",":
            self.pos += 1
            selectors.append(self.selector())
        if self.peek():
            found = _show(self.peek())
            problem = f"expected ',' or the end after the value, found {found}"
            self.fail(self.pos, problem, "double-quote a value that holds spaces")
        return tuple(selectors)

    def selector(self) -> _Selector:
        path = self.fieldpath()
        if self.peek() in ("", ","):
            return _Selector(path, "")
        op = self.operator()
        start, value = self.value(op)
        if op != "~=":
            return _Selector(path, op, value)
        try:
            regex = re2.compile(value.encode(), _RE2_OPTIONS)
        except re2.error as err:
            # RE2 says "<problem>: <the part of the pattern at fault>" (or no part): point
            # at that part when the value is verbatim in the input, else at the value.
            said = err.args[0] if err.args else ""
            said = said.decode("utf-8", "replace") if isinstance(said, bytes) else str(said)
            problem, _, culprit = said.partition(": ")
            body = start if self.text[start] not in '"/|' else start + 1
            verbatim = self.text[body : body + len(value)] == value
            offset = value.find(culprit) if culprit else -1
            pos = body + offset if verbatim and offset >= 0 else start
            self.fail(pos, f"invalid regular expression (RE2 syntax): {problem}", _RE2_HINTS.get(problem, ""))
        return _Selector(path, op, value, regex)

    def fieldpath(self) -> tuple[str, ...]:
        path = [self.field()]
        while self.peek() == ".":
            self.pos += 1
            path.append(self.field())
        return tuple(path)

    def field(self) -> str:
        if self.peek() == '"':
            return self.quoted()
        if m := _FIELD.match(self.text, self.pos):
            self.pos = m.end()
            return m.group()
        ch = self.peek()
        problem = f"expected a field name or a double-quoted string, found {_show(ch)}"
        self.fail(self.pos, problem, _QUOTE_HINT if ch else "")

    def operator(self) -> str:
        start = self.pos
        m = _OPERATOR.match(self.text, start)
        if m and m.group() in _OPERATORS:
            self.pos = m.end()
            return m.group()
        if m is None:
            found, hint = _show(self.text[start : start + 1]), _QUOTE_HINT
        elif m.group() == "=":
            found, hint = "'='", "write == to test equality"
        elif m.group()[:2] in _OPERATORS:  # "==!x": the value's first char joins the op
            found, hint = f"'{m.group()}'", "quote a value that starts with =, ! or ~"
        else:
            found, hint = f"'{m.group()}'", ""
        problem = f"expected operator ==, != or ~= after the field path, found {found}"
        self.fail(start, problem, hint)

    def value(self, op: str) -> tuple[int, str]:
        """Return where the value starts and the value, unquoted."""
        ch = self.peek()
        start = self.pos
        if ch == '"' or (op == "~=" and ch in ("/", "|")):
            return start, self.quoted()
        problem = f"expected a value after {op}, found {_show(ch)}"
        if ch in ("", ","):
            self.fail(start, problem, 'write "" for an empty value')
        end = start
        while end < len(self.text) and _is_bare(self.text[end]):
            end += 1
        if end == start:
            self.fail(start, problem)
        if ch in _NOT_BARE_START:
            suggestion = op + json.dumps(self.text[start:end], ensure_ascii=False)
            problem = f"a bare value can't start with '{ch}'"
            if ch in ("/", "|"):
                problem += f" (a {ch}...{ch} regular expression goes after ~= only)"
            self.fail(start, problem, f"double-quote it: {suggestion}")
        self.pos = end
        return start, self.text[start:end]

    def quoted(self) -> str:
        """Decode the string quoted at pos (by ", / or |) as Go's strconv.Unquote."""
        text, start = self.text, self.pos
        quote, out, i = text[start], bytearray(), start + 1
        while (ch := text[i : i + 1]) != quote:
            if ch in ("", "\n") or (ch == "\\" and text[i + 1 : i + 2] in ("", "\n")):
                hint = f"close it with {quote} on the same line"
                self.fail(start, "unterminated quoted string", hint)
            if ch == "\\":
                i = self.escape(i, quote, out)
            else:
                out += ch.encode()
                i += 1
        self.pos = i + 1
        try:
            return out.decode()
        except UnicodeDecodeError:
            hint = r"check its \x and octal escapes"
            self.fail(start, "the quoted string is not valid UTF-8", hint)

    def escape(self, i: int, quote: str, out: bytearray) -> int:
        """Append the escape whose backslash is at i to out; return the index after."""
        kind = self.text[i + 1]
        if kind == quote or kind in _ESCAPES:
            out += _ESCAPES.get(kind, quote).encode()
            return i + 2
        if m := _NUMERIC_ESCAPE.match(self.text, i + 1):
            code = m.group()
            if code[0] in "uU":
                value = int(code[1:], 16)
                if value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
                    self.fail(i, f"escape \\{code} is not a Unicode code point")
                out += chr(value).encode()
            elif code[0] == "x":
                out.append(int(code[1:], 16))
            elif (value := int(code, 8)) > 0xFF:
                self.fail(i, f"octal escape \\{code} is above \\377")
            else:
                out.append(value)
            return m.end()
        if kind in "xuU01234567":
            hint = r"write \xFF, \uFFFF, \UFFFFFFFF or octal \377"
            self.fail(i, f"incomplete escape \\{kind}", hint)
        escapes = f"\\\\ \\{quote} \\n \\t \\x41 \\101 \\u00e9"
        hint = f"quotes take Go's escapes ({escapes}): write \\\\ for a backslash"
        self.fail(i, f"invalid escape \\{kind} inside quotes", hint)
