"""The create step that puts a task on its container's network, and the teardown that
takes it off (both handed to `TaskService`, which knows nothing of networks).

The step runs after the rootfs and before the bundle is written: it attaches the task
(`NetworkService.attach`: netns, CNI ADD, /etc files), then edits the runtime spec to
join that netns and bind-mount the task's /etc/hosts, /etc/hostname and /etc/resolv.conf.
A container without `network`, or whose spec has no network namespace (it shares the
host's), is left as it is.
"""

from __future__ import annotations

from typing import Any

from ..errors import CargoholdError, ErrorKind
from ..runtime.create import CreateContext, Undo
from .service import NetworkService

_ETC_FILES = ("hosts", "hostname", "resolv.conf")


class NetworkStep:
    def __init__(self, networks: NetworkService) -> None:
        self._networks = networks

    async def run(self, context: CreateContext) -> Undo | None:
        wanted = context.container.network
        if wanted is None:
            return None
        config = context.config
        linux = config.setdefault("linux", {})
        namespaces: list[dict[str, Any]] = linux.setdefault("namespaces", [])
        entry = next((n for n in namespaces if n.get("type") == "network"), None)
        if entry is None:
            return None  # the host's network namespace: nothing to join
        if entry.get("path"):
            raise CargoholdError(
                ErrorKind.VALIDATION,
                f'container "{context.container.id}" joins network "{wanted.name}" but its spec names a network '
                "namespace path: drop one of the two",
            )
        uts = any(n.get("type") == "uts" for n in namespaces)
        hostname = wanted.hostname or (config.get("hostname") if uts else None) or context.container.id[:63]
        namespace, task_id = context.namespace, context.container.id
        etc_dir = context.layout.dir / "etc"
        attached = await self._networks.attach(namespace, task_id, wanted, hostname, etc_dir)
        entry["path"] = str(attached.netns)
        if uts and wanted.hostname:
            config["hostname"] = wanted.hostname
        elif uts and not config.get("hostname"):
            config["hostname"] = hostname
        mounts: list[dict[str, Any]] = config.setdefault("mounts", [])
        taken = {f"/etc/{name}" for name in _ETC_FILES}
        mounts[:] = [m for m in mounts if m.get("destination") not in taken]
        for name in _ETC_FILES:
            mounts.append({
                "destination": f"/etc/{name}", "type": "bind", "source": str(etc_dir / name),
                "options": ["rbind", "rprivate", "rw"],
            })

        async def undo() -> None:
            await self._networks.release(namespace, task_id)

        return undo
