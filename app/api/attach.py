"""Routes for attach: `GET /tasks/{id}/attach` and `.../processes/{exec_id}/attach` as
WebSockets speaking Kubernetes' channel protocol (app/attach/channels.py), and the
terminal's resize over plain HTTP. HTTP shape only; the rules are AttachService's.

Before the upgrade a refusal is problem+json (the WebSocket Denial Response extension,
which uvicorn has): 400 no protocol of ours offered, 403 a browser page of another
origin, 404 unknown, 409 exited or without stdin, 429 too many streams. After it, a
failure is one status message (channel 3) and a close code: 1008 a message breaking the
protocol or a client too slow to read, 1009 a message over the limit, 1003 a text
message, 1011 the daemon failed; a process's end is its exit status, then 1000.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Body, Response, WebSocket
from starlette.websockets import WebSocketDisconnect

from ..attach import channels
from ..attach.channels import Channel
from ..attach.hub import ClientTooSlowError
from ..attach.service import AttachSession
from ..daemon import Daemon
from ..errors import CargoholdError, ErrorKind, invalid
from ..identifiers import validate_identifier
from ..models import ResizeRequest
from .deps import ContainerId, DaemonDep, ExecId, NamespaceHeader, client_key, streams_of
from .problems import STATUS, problem_response, problems

log = logging.getLogger(__name__)

router = APIRouter(prefix="/tasks", tags=["attach"])

# WebSocket close codes (RFC 6455 7.4.1).
NORMAL = 1000
UNSUPPORTED_DATA = 1003
POLICY_VIOLATION = 1008
TOO_BIG = 1009
INTERNAL_ERROR = 1011
# How long a close may take to reach a client that does not read before it is given up.
CLOSE_TIMEOUT_SECONDS = 2.0


@router.post(
    "/{container_id}/resize", status_code=204, summary="Resize a task's terminal",
    responses=problems(400, 404, 409, 413, 422, 503),
)
async def resize_task(
    container_id: ContainerId, body: Annotated[ResizeRequest, Body()], namespace: NamespaceHeader, daemon: DaemonDep
) -> Response:
    await daemon.attach.resize(namespace, container_id, "", body.width, body.height)
    return Response(status_code=204)


@router.post(
    "/{container_id}/processes/{exec_id}/resize", status_code=204, summary="Resize an exec process's terminal",
    responses=problems(400, 404, 409, 413, 422, 503),
)
async def resize_process(
    container_id: ContainerId, exec_id: ExecId, body: Annotated[ResizeRequest, Body()], namespace: NamespaceHeader,
    daemon: DaemonDep,
) -> Response:
    await daemon.attach.resize(namespace, container_id, exec_id, body.width, body.height)
    return Response(status_code=204)


@router.websocket("/{container_id}/attach")
async def attach_task(websocket: WebSocket, container_id: str) -> None:
    """Attach to the task's init process (`?stdin=false` to leave its stdin alone; the
    namespace in the `Cargohold-Namespace` header or `?namespace=`, for browsers)."""
    await _attach(websocket, container_id, "")


@router.websocket("/{container_id}/processes/{exec_id}/attach")
async def attach_process(websocket: WebSocket, container_id: str, exec_id: str) -> None:
    """Attach to an exec process (as `attach_task`), also one added and not yet started:
    then start it, and nothing of its output is missed."""
    await _attach(websocket, container_id, exec_id)


async def _attach(websocket: WebSocket, task_id: str, exec_id: str) -> None:
    daemon: Daemon = websocket.state.daemon
    try:
        _same_origin(websocket)
        namespace = validate_identifier(
            "namespace", websocket.headers.get("cargohold-namespace") or websocket.query_params.get("namespace")
            or "default",
        )
        validate_identifier("container id", task_id)
        if exec_id:
            validate_identifier("exec id", exec_id)
        stdin = _flag(websocket, "stdin")
        subprotocol = channels.choose_subprotocol(websocket.scope.get("subprotocols", []))
        if subprotocol is None:
            raise invalid(f"attach speaks {' or '.join(channels.SUBPROTOCOLS)}: offer one in Sec-WebSocket-Protocol")
        release = streams_of(websocket, daemon).acquire(client_key(websocket), "an attach session")
    except CargoholdError as error:
        await _deny(websocket, error)
        return
    accepted = False
    try:
        async with daemon.attach.session(namespace, task_id, exec_id, stdin) as session:
            await websocket.accept(subprotocol)
            accepted = True
            ended = await _relay(websocket, session, subprotocol, daemon.settings.attach_max_message_bytes)
            if ended:  # the process has exited: its status, once recorded
                status = await daemon.attach.exit_status(namespace, task_id, exec_id)
                message = channels.exited(status) if status is not None else channels.failure(
                    "the process ended; its exit status is not known yet: ask POST .../wait",
                    reason="InternalError", code=500,
                )
                await _close(websocket, NORMAL, message)
    except CargoholdError as error:
        if accepted:
            raise
        await _deny(websocket, error)
    finally:
        release()


async def _relay(websocket: WebSocket, session: AttachSession, subprotocol: str, max_message: int) -> bool:
    """Carry output to the client and its input to the process until one side ends: True
    when the process's output ended (it exited), False when the client left or was sent
    away (with its status message and close code)."""
    outgoing = asyncio.ensure_future(_send_output(websocket, session))
    incoming = asyncio.ensure_future(_receive_input(websocket, session, subprotocol, max_message))
    # The sender may be stuck writing to a client that reads nothing: this one sees the drop.
    dropped = asyncio.ensure_future(session.dropped())
    sides = (outgoing, incoming, dropped)
    try:
        await asyncio.wait(sides, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for side in sides:
            side.cancel()
        await asyncio.wait(sides)
    if not outgoing.cancelled() and outgoing.exception() is None:
        return True
    error = next((side.exception() for side in sides if not side.cancelled() and side.exception()), None)
    if error is None or isinstance(error, (WebSocketDisconnect, OSError)):
        return False  # detached (or gone): the process runs on
    if isinstance(error, ClientTooSlowError):
        await _close(websocket, POLICY_VIOLATION, None, "client too slow: output was not read")
    elif isinstance(error, CargoholdError):
        code = {ErrorKind.TOO_LARGE: TOO_BIG, ErrorKind.VALIDATION: UNSUPPORTED_DATA}.get(error.kind, POLICY_VIOLATION)
        status = STATUS[error.kind]
        await _close(websocket, code, channels.failure(error, reason=_REASONS.get(status, "BadRequest"), code=status))
    else:
        log.error("attach failed", exc_info=error)
        await _close(websocket, INTERNAL_ERROR, channels.failure("the daemon failed", reason="InternalError", code=500))
    return False


_REASONS = {400: "BadRequest", 409: "Conflict", 413: "RequestEntityTooLarge", 422: "BadRequest"}


async def _send_output(websocket: WebSocket, session: AttachSession) -> None:
    while (output := await session.output()) is not None:
        channel, data = output
        await websocket.send_bytes(channels.frame(channel, data))


async def _receive_input(websocket: WebSocket, session: AttachSession, subprotocol: str, max_message: int) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", NORMAL))
        data: bytes | None = message.get("bytes")
        if data is None:
            raise CargoholdError(ErrorKind.VALIDATION, "text messages are not spoken here: send binary messages")
        if len(data) > max_message:
            raise CargoholdError(
                ErrorKind.TOO_LARGE, f"a message of {len(data)} bytes is over the limit of {max_message}"
            )
        parsed = channels.parse(data, subprotocol)
        if parsed.channel is Channel.STDIN:
            if parsed.data:
                await session.write_stdin(parsed.data)
        elif parsed.channel is Channel.RESIZE:
            session.resize(parsed.width, parsed.height)
        else:
            session.close_stdin()


async def _close(websocket: WebSocket, code: int, status: bytes | None, reason: str = "") -> None:
    """Send the status message (if any) and close; a client that reads nothing is given
    up on after CLOSE_TIMEOUT_SECONDS (uvicorn then drops the connection)."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
            if status is not None:
                await websocket.send_bytes(status)
            await websocket.close(code, reason)
    except (TimeoutError, WebSocketDisconnect, RuntimeError, OSError):
        pass  # the client has gone, or will be cut off


async def _deny(websocket: WebSocket, error: CargoholdError) -> None:
    """Refuse before the upgrade with problem+json (or, without the server's denial
    extension, close with 1008)."""
    status = STATUS[error.kind]
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(problem_response(status, error.detail, error.kind.value))
    else:
        await websocket.close(POLICY_VIOLATION, error.detail[:120])


def _same_origin(websocket: WebSocket) -> None:
    """Refuse a browser page of another origin (cross-site WebSocket hijacking): its
    Origin must name the host the request was sent to. Clients that are not browsers
    send no Origin."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return
    host = websocket.headers.get("host", "")
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
        raise CargoholdError(
            ErrorKind.PERMISSION_DENIED,
            f"a WebSocket from origin {origin!r} is refused: only pages served by this daemon ({host}) may attach",
        )


def _flag(websocket: WebSocket, name: str) -> bool | None:
    value: Any = websocket.query_params.get(name)
    if value is None:
        return None
    if value.lower() in ("1", "true"):
        return True
    if value.lower() in ("0", "false"):
        return False
    raise invalid(f"?{name}= is true or false, not {value!r}")
