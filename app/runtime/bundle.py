"""The OCI bundle a task runs from: `config.json` derived from the container's spec, and
the `rootfs` directory its snapshot is mounted on."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import CargoholdError, ErrorKind
from .defaults import with_defaults

BIND_OPTIONS = {"bind", "rbind"}


def cgroup_path(namespace: str, container_id: str) -> str:
    return f"/cargohold/{namespace}/{container_id}"


def runtime_id(namespace: str, container_id: str) -> str:
    """The container's id for runc/conmon: ids repeat across namespaces, runc's may not.
    `+` is allowed by runc and never part of an identifier, so the pair is unambiguous."""
    return f"{namespace}+{container_id}"


def task_config(
    spec: dict[str, Any], namespace: str, container_id: str, rootfs: Path, allowed_bind_roots: list[Path]
) -> dict[str, Any]:
    """The container's spec made runnable here: its root is the mounted snapshot, its
    cgroup is Cargohold's, its bind mounts come from allowed host paths only.
    Raises VALIDATION naming what cannot run."""
    config = with_defaults(spec)
    process = config.get("process")
    if not process:
        raise CargoholdError(ErrorKind.VALIDATION, "the container's spec has no process; a task needs spec.process")
    if process.get("terminal"):
        raise CargoholdError(ErrorKind.VALIDATION, "spec.process.terminal is not supported yet; set it to false")
    for mount in config.get("mounts") or []:
        if mount.get("type") == "bind" or BIND_OPTIONS & set(mount.get("options") or []):
            source = Path(os.path.normpath(mount.get("source", "")))
            if not any(source == root or root in source.parents for root in allowed_bind_roots):
                raise CargoholdError(
                    ErrorKind.VALIDATION,
                    f"spec.mounts: bind mount of host path {str(source)!r} is not allowed; "
                    "start the daemon with --allow-bind <dir> to permit it",
                )
    config["root"] = {**config.get("root", {}), "path": str(rootfs)}
    linux = config.setdefault("linux", {})
    linux["cgroupsPath"] = cgroup_path(namespace, container_id)
    return config


def write_config(bundle: Path, config: dict[str, Any]) -> None:
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "rootfs").mkdir(exist_ok=True)
    (bundle / "config.json").write_text(json.dumps(config))
