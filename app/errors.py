"""Error kinds, as containerd's errdefs: what went wrong, not which HTTP status it maps to.

Every layer raises `CargoholdError(kind, detail)`; only `api/problems.py` turns a kind
into a status code. This module must not import FastAPI or anything above it.

    CargoholdError
      kind: ErrorKind  (invalid-argument, not-found, already-exists, conflict, ...)
      detail: str      a sentence a person can act on
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    INVALID_ARGUMENT = "invalid-argument"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission-denied"  # e.g. a WebSocket from another origin (403)
    NOT_FOUND = "not-found"
    ALREADY_EXISTS = "already-exists"
    CONFLICT = "conflict"
    PRECONDITION_FAILED = "precondition-failed"
    TOO_LARGE = "too-large"
    VALIDATION = "validation"
    UNAVAILABLE = "unavailable"
    RESOURCE_EXHAUSTED = "resource-exhausted"  # a per-client cap reached (429)


class CargoholdError(Exception):
    """A failure of a known kind with a detail for the person who caused it."""

    def __init__(self, kind: ErrorKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail

    def __repr__(self) -> str:
        return f"CargoholdError({self.kind.value!r}, {self.detail!r})"


def invalid(detail: str) -> CargoholdError:
    return CargoholdError(ErrorKind.INVALID_ARGUMENT, detail)


def not_found(detail: str) -> CargoholdError:
    return CargoholdError(ErrorKind.NOT_FOUND, detail)
