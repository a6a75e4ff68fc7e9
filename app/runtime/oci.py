"""The OCI runtime command line (runc or crun): start, kill, pause, resume, ps, update,
state, list, delete. Each container's runtime state lives under a private `--root`, so
nothing here touches the host's default runc state. Failures carry the runtime's own
message and the kind it tells (`failure_kind`)."""

from __future__ import annotations

import asyncio
import json
import signal as signals
from pathlib import Path
from typing import Any

from ..errors import CargoholdError, ErrorKind, invalid


def parse_signal(value: int | str) -> int:
    """`SIGTERM`, `TERM`, `15` or 15 -> 15. Raises INVALID_ARGUMENT for anything else."""
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        number = int(value)
        if number in {s.value for s in signals.Signals}:
            return number
        raise invalid(f"unknown signal number {number}")
    name = value.upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    try:
        return signals.Signals[name].value
    except KeyError:
        raise invalid(f"unknown signal {value!r}; use a name such as SIGTERM or a number such as 15") from None


class OCIRuntime:
    """One runtime binary with its private state root."""

    def __init__(self, name: str, binary: str, state_root: Path) -> None:
        self.name = name
        self.binary = binary
        self.state_root = state_root

    @property
    def root_arg(self) -> str:
        return f"--root={self.state_root}"

    async def _run(self, *args: str, stdin: bytes | None = None, error_kind: ErrorKind | None = None) -> bytes:
        """The command's stdout. Raises the kind `error_kind`, else the one its message
        says (see `failure_kind`), with the runtime's message."""
        process = await asyncio.create_subprocess_exec(
            self.binary, self.root_arg, *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate(stdin)
        if process.returncode != 0:
            message = _runtime_message(err.decode(errors="replace").strip() or out.decode(errors="replace").strip())
            raise CargoholdError(error_kind or failure_kind(message), f"{self.name} {args[0]} failed: {message}")
        return out

    async def start(self, container_id: str) -> None:
        await self._run("start", container_id)

    async def kill(self, container_id: str, signal: int, all_processes: bool = False) -> None:
        await self._run("kill", *(["--all"] if all_processes else []), container_id, str(signal))

    async def pause(self, container_id: str) -> None:
        await self._run("pause", container_id)

    async def resume(self, container_id: str) -> None:
        await self._run("resume", container_id)

    async def pids(self, container_id: str) -> list[int]:
        out = await self._run("ps", "--format", "json", container_id)
        return sorted(json.loads(out or b"[]") or [])

    async def update(self, container_id: str, resources: dict[str, Any]) -> None:
        await self._run("update", "--resources", "-", container_id, stdin=json.dumps(resources).encode(),
                        error_kind=ErrorKind.VALIDATION)

    async def status(self, container_id: str) -> str | None:
        """created, running, paused or stopped as the runtime sees it; None when it does not
        know the container. The truth when the daemon's row may disagree (a crash between
        the runtime's change and the row's)."""
        try:
            out = await self._run("state", container_id)
        except CargoholdError:
            return None
        return str(json.loads(out).get("status"))

    async def statuses(self) -> dict[str, str]:
        """Every container in this runtime's state root with its status (one `list` call)."""
        if not self.state_root.exists():
            return {}
        out = await self._run("list", "--format", "json")
        return {entry["id"]: str(entry["status"]) for entry in json.loads(out or b"[]") or []}

    async def delete(self, container_id: str) -> None:
        """Force-delete (kills what is left); a container the runtime doesn't know is fine."""
        try:
            await self._run("delete", "--force", container_id)
        except CargoholdError as error:
            if error.kind is not ErrorKind.NOT_FOUND and "not found" not in error.detail.lower():
                raise


# What runc and crun say, lower-cased, for each kind of failure; anything else is CONFLICT
# (the container is not in a state that allows it), as it was before kinds were told apart.
_FAILURE_KINDS = (
    (ErrorKind.NOT_FOUND, ("does not exist", "container not found")),
    (ErrorKind.VALIDATION, ("executable file not found", "permission denied", "invalid", "unknown field",
                            "failed to parse", "cannot unmarshal")),
    (ErrorKind.CONFLICT, ("not running", "is paused", "not paused", "stopped", "already running", "not created")),
)


def failure_kind(message: str) -> ErrorKind:
    """The kind of a runtime failure, from its message: a container the runtime does not
    know is NOT_FOUND, a spec or process it cannot run is VALIDATION, a container in the
    wrong state (and anything unrecognised) CONFLICT."""
    lowered = message.lower()
    for kind, phrases in _FAILURE_KINDS:
        if any(phrase in lowered for phrase in phrases):
            return kind
    return ErrorKind.CONFLICT


def _runtime_message(raw: str) -> str:
    """runc logs JSON or logfmt lines (`level=error msg="..."`); keep the message."""
    messages = []
    for line in raw.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                messages.append(str(json.loads(line).get("msg", line)))
                continue
            except ValueError:
                pass
        if 'msg="' in line:
            messages.append(line.split('msg="', 1)[1].rsplit('"', 1)[0].replace('\\"', '"'))
        elif line:
            messages.append(line)
    return "; ".join(messages) or "no message"
