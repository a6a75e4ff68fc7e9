"""The OCI bundle a task runs from: `config.json` derived from the container's spec, and
the `rootfs` directory its snapshot is mounted on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import CargoholdError, ErrorKind
from ..ondisk import write_private
from .defaults import with_defaults


def runtime_id(namespace: str, container_id: str) -> str:
    """The container's id for runc/conmon: ids repeat across namespaces, runc's may not.
    `+` is allowed by runc and never part of an identifier, so the pair is unambiguous."""
    return f"{namespace}+{container_id}"


def task_config(spec: dict[str, Any], rootfs: Path, cgroups_path: str) -> dict[str, Any]:
    """The container's spec, as `SpecPolicy.runnable` passed it (checked, with defaults and
    seccomp), made runnable here: its root is the mounted snapshot, its cgroup is
    `cgroups_path` (this daemon's). Raises VALIDATION naming what cannot run."""
    config = with_defaults(spec)
    process = config.get("process")
    if not process:
        raise CargoholdError(ErrorKind.VALIDATION, "the container's spec has no process; a task needs spec.process")
    config["root"] = {**config.get("root", {}), "path": str(rootfs)}
    linux = config.setdefault("linux", {})
    linux["cgroupsPath"] = cgroups_path
    return config


def write_config(bundle: Path, config: dict[str, Any]) -> None:
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "rootfs").mkdir(exist_ok=True)
    # 0600: the spec holds the container's environment (secrets, often).
    write_private(bundle / "config.json", json.dumps(config).encode())
