"""Kubernetes' channel protocol (app/attach/channels.py): what a client may send, the
status messages a process's end becomes, and the subprotocol chosen."""

from __future__ import annotations

import json

import pytest

from app.attach import channels
from app.attach.channels import V4, V5, Channel
from app.errors import CargoholdError, ErrorKind


@pytest.mark.parametrize(
    "offered, chosen",
    [
        pytest.param([V4, V5], V5, id="v5-preferred"),
        pytest.param([V4], V4, id="v4"),
        pytest.param(["v3.channel.k8s.io", "channel.k8s.io"], None, id="older"),
        pytest.param([], None, id="none"),
    ],
)
def test_choose_subprotocol(offered: list[str], chosen: str | None) -> None:
    assert channels.choose_subprotocol(offered) == chosen


def test_parse_valid() -> None:
    assert channels.parse(b"\x00ls\n", V5) == channels.Message(Channel.STDIN, b"ls\n")
    assert channels.parse(b"\x00", V4) == channels.Message(Channel.STDIN, b"")
    resize = channels.parse(b'\x04{"Width": 80, "Height": 24}', V4)
    assert (resize.channel, resize.width, resize.height) == (Channel.RESIZE, 80, 24)
    assert channels.parse(b"\xff\x00", V5).channel is Channel.CLOSE


@pytest.mark.parametrize(
    "message, protocol, words",
    [
        pytest.param(b"", V5, "empty", id="empty"),
        pytest.param(b"\x01out", V5, "channel 1", id="stdout"),
        pytest.param(b"\x03{}", V5, "channel 3", id="status"),
        pytest.param(b"\x07", V5, "channel 7", id="unknown"),
        pytest.param(b"\xff\x00", V4, "channel 255", id="close-in-v4"),
        pytest.param(b"\xff\x01", V5, "only stdin", id="close-stdout"),
        pytest.param(b"\xff", V5, "only stdin", id="close-nothing"),
        pytest.param(b'\x04{"Width": 0, "Height": 24}', V5, "width", id="zero-width"),
        pytest.param(b'\x04{"Width": 80, "Height": 1001}', V5, "height", id="too-tall"),
        pytest.param(b'\x04{"Width": 80.5, "Height": 24}', V5, "width", id="fraction"),
        pytest.param(b'\x04{"Width": true, "Height": 24}', V5, "width", id="bool"),
        pytest.param(b'\x04{"Width": "80", "Height": 24}', V5, "width", id="string"),
        pytest.param(b"\x04[80, 24]", V5, "object", id="array"),
        pytest.param(b"\x0480x24", V5, "JSON", id="not-json"),
    ],
)
def test_parse_refused(message: bytes, protocol: str, words: str) -> None:
    with pytest.raises(CargoholdError) as error:
        channels.parse(message, protocol)
    assert error.value.kind is ErrorKind.INVALID_ARGUMENT and words in error.value.detail


def test_status_messages() -> None:
    assert channels.exited(0) == b'\x03{"metadata":{},"status":"Success"}'
    failed = json.loads(channels.exited(137)[1:])
    assert failed["status"] == "Failure" and failed["reason"] == "NonZeroExitCode"
    assert failed["details"]["causes"] == [{"reason": "ExitCode", "message": "137"}]
    refused = json.loads(channels.failure("no stdin", reason="Conflict", code=409)[1:])
    assert refused == {"metadata": {}, "status": "Failure", "message": "no stdin", "reason": "Conflict", "code": 409}
