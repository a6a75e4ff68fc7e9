"""Identifier and label rules, merge patch, and the error-kind -> status table."""

from __future__ import annotations

import pytest

from app.api.problems import STATUS
from app.errors import CargoholdError, ErrorKind
from app.identifiers import identifier_problem, labels_problem, validate_identifier
from app.mergepatch import apply_merge_patch


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("web", id="plain"),
        pytest.param("a.b_c-d", id="separators"),
        pytest.param("A1", id="mixed-case"),
        pytest.param("x" * 76, id="76-chars"),
    ],
)
def test_valid_identifiers(value: str) -> None:
    assert identifier_problem(value) is None


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("x" * 77, "at most 76", id="77-chars"),
        pytest.param("../x", "letters and digits", id="traversal"),
        pytest.param("wéb", "letters and digits", id="unicode"),
        pytest.param("-a", "letters and digits", id="leading-separator"),
        pytest.param("a-", "letters and digits", id="trailing-separator"),
        pytest.param("a--b", "letters and digits", id="double-separator"),
        pytest.param("a b", "letters and digits", id="space"),
        pytest.param("a\n", "letters and digits", id="newline"),
    ],
)
def test_invalid_identifiers(value: str, fragment: str) -> None:
    problem = identifier_problem(value)
    assert problem is not None and fragment in problem
    with pytest.raises(CargoholdError) as raised:
        validate_identifier("container id", value)
    assert raised.value.kind is ErrorKind.INVALID_ARGUMENT
    assert "container id" in raised.value.detail


def test_label_limits() -> None:
    assert labels_problem({"k": "v" * 4095}) is None
    assert "4096" in (labels_problem({"k": "v" * 4096}) or "")
    assert labels_problem({f"k{i}": "v" for i in range(256)}) is None
    assert "256" in (labels_problem({f"k{i}": "v" for i in range(257)}) or "")
    assert "empty" in (labels_problem({"": "v"}) or "")
    # bytes, not characters: 2 bytes each
    assert "4096" in (labels_problem({"k": "é" * 2048}) or "")


@pytest.mark.parametrize(
    ("target", "patch", "expected"),
    [
        pytest.param({"a": "b"}, {"a": "c"}, {"a": "c"}, id="replace"),
        pytest.param({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}, id="add"),
        pytest.param({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}, id="null-deletes"),
        pytest.param({"a": {"b": 1, "c": 2}}, {"a": {"b": None}}, {"a": {"c": 2}}, id="nested"),
        pytest.param({"a": [1, 2]}, {"a": [3]}, {"a": [3]}, id="arrays-replace"),
        pytest.param({"a": "b"}, ["c"], ["c"], id="non-object-replaces"),
        pytest.param("text", {"a": {"b": None}}, {"a": {}}, id="object-onto-scalar"),
    ],
)
def test_merge_patch_rfc7396(target: object, patch: object, expected: object) -> None:
    assert apply_merge_patch(target, patch) == expected


def test_merge_patch_does_not_modify_its_arguments() -> None:
    target = {"labels": {"a": "1"}}
    apply_merge_patch(target, {"labels": {"a": None}})
    assert target == {"labels": {"a": "1"}}


def test_every_error_kind_has_a_status() -> None:
    assert set(STATUS) == set(ErrorKind)
    assert STATUS[ErrorKind.CONFLICT] == 409 and STATUS[ErrorKind.PRECONDITION_FAILED] == 412
