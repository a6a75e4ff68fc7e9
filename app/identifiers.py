"""Rules for identifiers and labels, as containerd's `pkg/identifiers` and `pkg/labels`.

An identifier (container id, namespace name, snapshot key component) is one or more
alphanumeric runs joined by single `.`, `_` or `-`, at most 76 characters. Labels: at most
256 per object, key and value together at most 4096 bytes.
"""

from __future__ import annotations

import re

from .errors import invalid

MAX_IDENTIFIER_LENGTH = 76
MAX_LABELS = 256
MAX_LABEL_BYTES = 4096

_ALPHANUM = r"[A-Za-z0-9]+"
_SEPARATOR = r"[._-]"
IDENTIFIER_PATTERN = rf"^{_ALPHANUM}(?:{_SEPARATOR}{_ALPHANUM})*$"
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN, re.ASCII)


def identifier_problem(value: str) -> str | None:
    """Say what is wrong with `value` as an identifier, or None when it is valid."""
    if not value:
        return "must not be empty"
    if len(value) > MAX_IDENTIFIER_LENGTH:
        return f"must be at most {MAX_IDENTIFIER_LENGTH} characters (got {len(value)})"
    if not _IDENTIFIER.fullmatch(value):
        return (
            "must be letters and digits, optionally joined by single '.', '_' or '-' "
            "(no leading, trailing or repeated separators)"
        )
    return None


def validate_identifier(what: str, value: str) -> str:
    """Return `value` if it is a valid identifier, else raise INVALID_ARGUMENT naming `what`."""
    problem = identifier_problem(value)
    if problem is not None:
        raise invalid(f"{what} {value!r} is not a valid identifier: it {problem}")
    return value


def labels_problem(labels: dict[str, str]) -> str | None:
    """Say what is wrong with a label set, or None when it is valid."""
    if len(labels) > MAX_LABELS:
        return f"at most {MAX_LABELS} labels are allowed (got {len(labels)})"
    for key, value in labels.items():
        if not key:
            return "label keys must not be empty"
        size = len(key.encode()) + len(value.encode())
        if size > MAX_LABEL_BYTES:
            return (
                f"label {key[:64]!r} is {size} bytes; key and value together "
                f"must be at most {MAX_LABEL_BYTES} bytes"
            )
    return None
