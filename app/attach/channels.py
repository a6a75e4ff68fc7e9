"""Kubernetes' channel protocol for a process's streams over one WebSocket
(`k8s.io/apimachinery/pkg/util/remotecommand`, `v4.channel.k8s.io`, `v5.channel.k8s.io`).

Every binary message is one byte of channel, then the data: 0 stdin (client to server),
1 stdout, 2 stderr, 3 error/status (one JSON `metav1.Status` when the process ends or
the session fails), 4 resize (`{"Width": W, "Height": H}`, client to server). v5 adds a
close message, channel 255 with one byte naming the channel closed: `[255, 0]` closes
stdin. This module frames and parses; it holds no stream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ..errors import CargoholdError, invalid
from .conmon import MAX_TERMINAL_SIDE

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
# Preferred first, as the Kubernetes API server chooses.
SUBPROTOCOLS = (V5, V4)


class Channel(IntEnum):
    STDIN = 0
    STDOUT = 1
    STDERR = 2
    ERROR = 3
    RESIZE = 4
    CLOSE = 255  # v5 only


def choose_subprotocol(offered: list[str]) -> str | None:
    """The protocol spoken: the best of ours the client offers, or None."""
    for ours in SUBPROTOCOLS:
        if ours in offered:
            return ours
    return None


def frame(channel: Channel, data: bytes) -> bytes:
    return bytes((channel,)) + data


@dataclass(frozen=True)
class Message:
    """A client's message: stdin data, a resize, or (v5) a channel closed."""

    channel: Channel
    data: bytes = b""
    width: int = 0
    height: int = 0


def parse(message: bytes, subprotocol: str) -> Message:
    """A client's binary message. Raises INVALID_ARGUMENT for an empty one, a channel a
    client may not send on, or a resize that is not two positive integers."""
    if not message:
        raise invalid("an empty message: each starts with its channel byte")
    number, data = message[0], message[1:]
    if number == Channel.STDIN:
        return Message(Channel.STDIN, data)
    if number == Channel.RESIZE:
        width, height = parse_size(data)
        return Message(Channel.RESIZE, width=width, height=height)
    if number == Channel.CLOSE and subprotocol == V5:
        if data != bytes((Channel.STDIN,)):
            raise invalid(f"close of channel {list(data)}: only stdin (0) can be closed")
        return Message(Channel.CLOSE, data)
    allowed = "0 (stdin), 4 (resize)" + (" or 255 (close)" if subprotocol == V5 else "")
    raise invalid(f"channel {number} is not one a client sends on: use {allowed}")


def parse_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a resize message `{"Width": W, "Height": H}`."""
    try:
        document = json.loads(data)
    except ValueError:
        raise invalid('a resize is JSON: {"Width": <columns>, "Height": <rows>}') from None
    if not isinstance(document, dict):
        raise invalid('a resize is a JSON object: {"Width": <columns>, "Height": <rows>}')
    return checked_size(document.get("Width"), document.get("Height"))


def checked_size(width: Any, height: Any) -> tuple[int, int]:
    """`width` and `height` if both are integers from 1 to conmon's limit."""
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TERMINAL_SIDE:
            raise invalid(f"{name} must be an integer from 1 to {MAX_TERMINAL_SIDE}, not {value!r}")
    return width, height


def success() -> bytes:
    """The status message of a process that exited 0."""
    return _status({"metadata": {}, "status": "Success"})


def exited(exit_status: int) -> bytes:
    """The status message of a process's exit: Success for 0, else Failure with the exit
    code in `details.causes`, as the kubelet words it."""
    if exit_status == 0:
        return success()
    return _status({
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: {exit_status}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(exit_status)}]},
    })


def failure(error: CargoholdError | str, reason: str = "BadRequest", code: int = 400) -> bytes:
    """The status message of a session that failed (not the process)."""
    detail = error.detail if isinstance(error, CargoholdError) else error
    return _status({"metadata": {}, "status": "Failure", "message": detail, "reason": reason, "code": code})


def _status(document: dict[str, Any]) -> bytes:
    return frame(Channel.ERROR, json.dumps(document, separators=(",", ":")).encode())
