"""A runtime failure's kind is read from what runc (or crun) says, not one kind for all."""

from __future__ import annotations

import pytest

from app.errors import ErrorKind
from app.runtime.oci import failure_kind


@pytest.mark.parametrize(
    "message, kind",
    [
        ('container "ns+web" does not exist', ErrorKind.NOT_FOUND),
        ("container not running", ErrorKind.CONFLICT),
        ("container ns+web is paused, unpause it first", ErrorKind.CONFLICT),
        ("cannot start a container that has stopped", ErrorKind.CONFLICT),
        ('exec: "/nope": stat /nope: executable file not found in $PATH', ErrorKind.VALIDATION),
        ("json: cannot unmarshal string into Go struct field", ErrorKind.VALIDATION),
        ("something nobody foresaw", ErrorKind.CONFLICT),
    ],
)
def test_failure_kind(message: str, kind: ErrorKind) -> None:
    assert failure_kind(message) is kind
