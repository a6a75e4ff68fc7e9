"""A client of the CNI 1.0 exec protocol: run each plugin of a chain, as libcni does.

A plugin is an executable found on the CNI path; it is run with CNI_COMMAND,
CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME and CNI_PATH in its environment and its network
config (the chain's `cniVersion` and `name` added, and the previous plugin's result as
`prevResult`) on stdin. On success ADD prints a result; on failure a plugin prints an
error `{"code", "msg", "details"}` and exits non-zero. DEL runs the chain in reverse with
the ADD's result as `prevResult`, and is idempotent: what is already gone (a missing
netns, plugin, interface or allocation) is not a failure, so a DEL can be repeated after
a crash.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CNI_VERSION = "1.0.0"
# A plugin that takes longer is killed: a request must not hang on one.
PLUGIN_TIMEOUT_SECONDS = 60


class CNIError(Exception):
    """A plugin failed; `code`, `msg` and `details` are the plugin's error JSON when it gave one."""

    def __init__(self, plugin: str, command: str, code: int, msg: str, details: str = "") -> None:
        self.plugin, self.command, self.code, self.msg, self.details = plugin, command, code, msg, details
        super().__init__(self.describe())

    def describe(self) -> str:
        text = f"CNI plugin {self.plugin} {self.command} failed (code {self.code}): {self.msg}"
        return f"{text}; {self.details}" if self.details else text


@dataclass(frozen=True)
class Invocation:
    """Where a chain runs: the CNI container id, the netns path and the interface name."""

    container_id: str
    netns: str
    ifname: str


class Chain:
    """A network config list (`conflist`): plugins run in order for ADD, reversed for DEL."""

    def __init__(self, name: str, plugins: Sequence[dict[str, Any]], search_path: Sequence[Path]) -> None:
        self.name = name
        self.plugins = list(plugins)
        self._path = list(search_path)

    def conflist(self) -> dict[str, Any]:
        return {"cniVersion": CNI_VERSION, "name": self.name, "plugins": self.plugins}

    async def add(self, where: Invocation) -> dict[str, Any]:
        """Run ADD through the chain; the last plugin's result. Raises CNIError (the caller
        undoes with `delete`, which the spec asks for after a failed ADD too)."""
        result: dict[str, Any] | None = None
        for plugin in self.plugins:
            result = await self._run(plugin, "ADD", where, result)
        return result or {"cniVersion": CNI_VERSION}

    async def delete(self, where: Invocation, result: dict[str, Any] | None) -> list[CNIError]:
        """Run DEL through the chain in reverse, every plugin even when one fails; the
        failures (what is already gone is not one)."""
        failures: list[CNIError] = []
        for plugin in reversed(self.plugins):
            try:
                await self._run(plugin, "DEL", where, result)
            except CNIError as error:
                if _gone(error):
                    log.debug("CNI DEL in %s: %s (already gone)", self.name, error)
                else:
                    failures.append(error)
        return failures

    async def _run(
        self, plugin: dict[str, Any], command: str, where: Invocation, previous: dict[str, Any] | None
    ) -> dict[str, Any]:
        kind = str(plugin.get("type", ""))
        binary = self._find(kind, command)
        config = {"cniVersion": CNI_VERSION, "name": self.name, **plugin}
        if previous is not None:
            config["prevResult"] = previous
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": where.container_id,
            "CNI_NETNS": where.netns,
            "CNI_IFNAME": where.ifname,
            "CNI_PATH": os.pathsep.join(str(p) for p in self._path),
            # The plugins run iptables, ip and sysctl; nothing of the daemon's environment else.
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        }
        process = await asyncio.create_subprocess_exec(
            str(binary), env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(PLUGIN_TIMEOUT_SECONDS):
                out, err = await process.communicate(json.dumps(config).encode())
        except TimeoutError:
            process.kill()
            await process.wait()
            raise CNIError(kind, command, 999, f"did not finish within {PLUGIN_TIMEOUT_SECONDS} s") from None
        except asyncio.CancelledError:
            # Shielded undos rely on this: a plugin is never left running on its own.
            if process.returncode is None:
                process.kill()
                await process.wait()
            raise
        if process.returncode != 0:
            raise _error(kind, command, process.returncode or 0, out, err)
        if command != "ADD":
            return previous or {}
        try:
            parsed = json.loads(out) if out.strip() else {}
        except ValueError:
            raise CNIError(kind, command, 999, f"printed a result that is not JSON: {out[:200]!r}") from None
        if not isinstance(parsed, dict):
            raise CNIError(kind, command, 999, "printed a result that is not a JSON object")
        return parsed

    def _find(self, kind: str, command: str) -> Path:
        if not kind or "/" in kind:
            raise CNIError(kind or "?", command, 1, f"bad plugin type {kind!r}")
        for directory in self._path:
            candidate = directory / kind
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
        searched = ", ".join(str(p) for p in self._path)
        raise CNIError(kind, command, 1, f'failed to find plugin "{kind}" in path [{searched}]')


def _error(kind: str, command: str, returncode: int, out: bytes, err: bytes) -> CNIError:
    """The plugin's error JSON (on stdout, as the spec says; some use stderr), else its output."""
    for stream in (out, err):
        try:
            document = json.loads(stream)
        except ValueError:
            continue
        if isinstance(document, dict) and "msg" in document:
            code = document.get("code")
            return CNIError(kind, command, code if isinstance(code, int) else returncode,
                            str(document.get("msg")), str(document.get("details") or ""))
    text = (err or out).decode(errors="replace").strip()[:500] or f"exited with status {returncode}"
    return CNIError(kind, command, returncode, text)


def _gone(error: CNIError) -> bool:
    """Whether a DEL failed only because what it would remove is gone already."""
    text = f"{error.msg} {error.details}".lower()
    return "not found" in text or "no such" in text or "does not exist" in text or "failed to find plugin" in text


def first_ip(result: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """The container's address (without prefix), gateway and MAC from an ADD result: the
    first IP on an interface that has a sandbox (the container's side)."""
    interfaces = result.get("interfaces") or []
    for ip in result.get("ips") or []:
        index = ip.get("interface")
        iface = interfaces[index] if isinstance(index, int) and 0 <= index < len(interfaces) else {}
        if index is None or iface.get("sandbox"):
            return str(ip["address"]).split("/")[0], ip.get("gateway"), iface.get("mac")
    raise ValueError("the CNI result has no address in the container")
