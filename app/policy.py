"""SpecPolicy: what a container's spec may ask of the host (DESIGN.md, "Spec policy").

Calling the API over the unix socket is root-equivalent; a spec is not. By default a spec
may not reach the host: hooks and the runtime annotations that act like them, namespace
`path`s, a missing pid/mount/ipc/uts namespace, devices and device-cgroup rules beyond
runc's defaults, capabilities beyond the default set, mounts other than bind (from inside
`--allow-bind`, resolved with realpath), proc, sysfs, tmpfs, devpts, mqueue and cgroup,
removed masked or read-only paths, and a seccomp profile weaker than the default are all
refused, each a VALIDATION error naming its field. A task gets the default seccomp profile
when its spec gives none.

`--allow-privileged`, or the namespace label `cargohold.policy=privileged`, lifts the
refusals, as Kubernetes' Pod Security level "privileged" lifts "baseline". Only a caller
on the unix socket may set or remove that label (see `NamespaceService`).

The rules are checked at container create and update and again at task create and exec:
a namespace's label can change in between. This module reads namespace labels and
resolves paths; it never changes anything.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import CargoholdError, ErrorKind
from .runtime.defaults import DEFAULT_LINUX, with_defaults
from .runtime.seccomp import DEFAULT_PROFILE_PATH, PROFILE_PACKAGE, SeccompProfile, weaker_than
from .store.namespaces import NamespaceStore

POLICY_LABEL = "cargohold.policy"
PRIVILEGED = "privileged"
# The default, which a namespace may also say explicitly.
RESTRICTED = "restricted"
POLICY_VALUES = (PRIVILEGED, RESTRICTED)

# Docker's and containerd's default set (containerd's oci.defaultUnixCaps): what every
# `docker run` container has, so images expect them (chown, su, setcap ...). A spec that
# says nothing still gets runc's three (runtime/defaults.py); it may ask for any of these.
ALLOWED_CAPABILITIES = frozenset({
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
})
CAPABILITY_SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")
HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
REQUIRED_NAMESPACES = ("pid", "mount", "ipc", "uts")
BIND_OPTIONS = frozenset({"bind", "rbind"})
# Filesystems the kernel makes for the container itself; anything else (overlay with a
# host lowerdir, ext4 of a host block device, nfs ...) reaches host data.
MOUNT_TYPES = frozenset({"proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup"})
# Where the masked and read-only paths apply: a second proc or sysfs elsewhere would
# escape them (/proc2/sysrq-trigger writable), and a writable sysfs or cgroup lets root
# in the container write host kernel and cgroup settings.
PINNED_DESTINATIONS = {"proc": "/proc", "sysfs": "/sys"}
READ_ONLY_TYPES = frozenset({"sysfs", "cgroup"})

# Runtime annotations that act on the host: crun's `run.oci.*` (hooks' output files,
# seccomp listeners and plugins loaded into crun, raw seccomp data replacing the spec's,
# pidfd receivers, cgroup v1 mounts and delegation, handlers) and runc's
# `org.systemd.property.*` (systemd unit properties such as DeviceAllow). Unknown ones
# under these prefixes are refused too; these few only narrow what the container gets.
RUNTIME_ANNOTATION_PREFIXES = ("run.oci.", "org.systemd.property.")
HARMLESS_ANNOTATIONS = frozenset({
    "run.oci.seccomp_fail_unknown_syscall", "run.oci.timens_offset", "run.oci.mount_context_type",
})

# The nodes runc makes in every container (libcontainer/specconv AllowedDevices):
# a spec may list them again, nothing else.
DEFAULT_DEVICES = frozenset({
    ("/dev/null", "c", 1, 3), ("/dev/zero", "c", 1, 5), ("/dev/full", "c", 1, 7),
    ("/dev/random", "c", 1, 8), ("/dev/urandom", "c", 1, 9), ("/dev/tty", "c", 5, 0),
})
# runc's default device-cgroup allow rules (type, major, minor, access; None: any):
# mknod of any node, and use of the default nodes, the ptys and /dev/net/tun.
DEFAULT_DEVICE_RULES: tuple[tuple[str, int | None, int | None, str], ...] = (
    ("c", None, None, "m"), ("b", None, None, "m"),
    ("c", 1, 3, "rwm"), ("c", 1, 5, "rwm"), ("c", 1, 7, "rwm"), ("c", 1, 8, "rwm"), ("c", 1, 9, "rwm"),
    ("c", 5, 0, "rwm"), ("c", 5, 1, "rwm"), ("c", 5, 2, "rwm"), ("c", 136, None, "rwm"), ("c", 10, 200, "rwm"),
)


def _refusal(namespace: str, violations: Sequence[str]) -> CargoholdError:
    return CargoholdError(
        ErrorKind.VALIDATION,
        f'the spec reaches the host, which namespace "{namespace}" does not allow: {"; ".join(violations)}. '
        f"A namespace labelled {POLICY_LABEL}={PRIVILEGED} (set over the unix socket) or a daemon started "
        "with --allow-privileged allows it",
    )


def capability_violations(process: Mapping[str, Any], field: str) -> list[str]:
    """Capabilities beyond ALLOWED_CAPABILITIES in each set of `process` (with defaults)."""
    found = []
    capabilities = process.get("capabilities")
    if capabilities is None:
        return []
    if not isinstance(capabilities, Mapping):
        return [f"{field}.capabilities: must be an object of capability lists"]
    for kind in CAPABILITY_SETS:
        names = capabilities.get(kind) or []
        if not isinstance(names, list):
            found.append(f"{field}.capabilities.{kind}: must be a list")
            continue
        extra = sorted({str(name) for name in names if _capability(name) not in ALLOWED_CAPABILITIES})
        if extra:
            found.append(f"{field}.capabilities.{kind}: {', '.join(extra)} beyond the default set")
    return found


def _capability(name: Any) -> str:
    upper = str(name).upper()
    return upper if upper.startswith("CAP_") else f"CAP_{upper}"


def spec_violations(
    spec: Mapping[str, Any], allowed_bind_roots: Iterable[Path], default_seccomp: SeccompProfile | None
) -> list[str]:
    """Every way `spec` (as stored: the daemon's defaults are applied here) reaches the
    host, each as "field: reason"; empty when it does not. Bind sources are judged resolved."""
    config = with_defaults(dict(spec))
    found = _hook_violations(config) + _annotation_violations(config)
    process = config.get("process")
    if isinstance(process, Mapping):
        found += capability_violations(process, "spec.process")
    linux = config.get("linux") or {}
    if not isinstance(linux, Mapping):
        return [*found, "spec.linux: must be an object"]
    found += _namespace_violations(linux) + _device_violations(linux)
    found += _mount_violations(config.get("mounts"), [Path(os.path.realpath(root)) for root in allowed_bind_roots])
    for key in ("maskedPaths", "readonlyPaths"):
        given = linux.get(key)
        kept = {path for path in given if isinstance(path, str)} if isinstance(given, list) else set()
        removed = [path for path in DEFAULT_LINUX[key] if path not in kept]
        if removed:
            found.append(f"spec.linux.{key}: drops {', '.join(removed)} (a spec's list must keep the defaults)")
    if linux.get("seccomp") is not None:
        default = None
        if default_seccomp is not None:
            default = default_seccomp.for_capabilities(_bounding(process))
        found += [f"spec.linux.seccomp{field}: {reason}" for field, reason in weaker_than(linux["seccomp"], default)]
    if linux.get("netDevices"):
        found.append("spec.linux.netDevices: moves host network interfaces into the container")
    return found


def _bounding(process: Any) -> list[str]:
    if not isinstance(process, Mapping) or not isinstance(process.get("capabilities"), Mapping):
        return []
    bounding = process["capabilities"].get("bounding")
    return [_capability(name) for name in bounding] if isinstance(bounding, list) else []


def _hook_violations(config: Mapping[str, Any]) -> list[str]:
    hooks = config.get("hooks")
    if not hooks:
        return []
    if not isinstance(hooks, Mapping):
        return ["spec.hooks: hooks run host programs as root"]
    return [f"spec.hooks.{kind}: hooks run host programs as root" for kind, listed in hooks.items() if listed]


def _annotation_violations(config: Mapping[str, Any]) -> list[str]:
    annotations = config.get("annotations") or {}
    return [
        f'spec.annotations."{key}": a runtime annotation that acts on the host'
        for key in annotations
        if key.startswith(RUNTIME_ANNOTATION_PREFIXES) and key not in HARMLESS_ANNOTATIONS
    ]


def _namespace_violations(linux: Mapping[str, Any]) -> list[str]:
    namespaces = linux.get("namespaces")
    if not isinstance(namespaces, list):
        return ["spec.linux.namespaces: must be a list (with pid, mount, ipc and uts)"]
    found = []
    present = set()
    for index, entry in enumerate(namespaces):
        if not isinstance(entry, Mapping):
            found.append(f"spec.linux.namespaces[{index}]: must be an object")
            continue
        present.add(str(entry.get("type")))
        if entry.get("path"):
            found.append(f"spec.linux.namespaces[{index}].path: joins an existing {entry.get('type')} namespace")
    missing = [kind for kind in REQUIRED_NAMESPACES if kind not in present]
    if missing:
        found.append(f"spec.linux.namespaces: no {', '.join(missing)} namespace: the container would share the host's")
    return found


def _device_violations(linux: Mapping[str, Any]) -> list[str]:
    devices = linux.get("devices") or []
    resources = linux.get("resources") or {}
    rules = (resources.get("devices") if isinstance(resources, Mapping) else None) or []
    if not isinstance(devices, list) or not isinstance(rules, list):
        return ["spec.linux.devices and spec.linux.resources.devices: must be lists"]
    found = []
    for index, device in enumerate(devices):
        node = tuple(device.get(key) for key in ("path", "type", "major", "minor")) if isinstance(
            device, Mapping) else None
        if not any(node == default for default in DEFAULT_DEVICES):  # compared, not hashed: any JSON may come
            found.append(f"spec.linux.devices[{index}]: a device node beyond runc's defaults")
    for index, rule in enumerate(rules):
        if isinstance(rule, Mapping) and rule.get("allow") is False:
            continue  # a deny only narrows
        if not isinstance(rule, Mapping) or not _default_device_rule(rule):
            found.append(f"spec.linux.resources.devices[{index}]: allows devices beyond runc's defaults")
    return found


def _default_device_rule(rule: Mapping[str, Any]) -> bool:
    kind = rule.get("type") or "a"
    major, minor = rule.get("major"), rule.get("minor")
    access = str(rule.get("access") or "rwm")
    for default_kind, default_major, default_minor, default_access in DEFAULT_DEVICE_RULES:
        if (
            kind == default_kind
            and (major == default_major or (default_major is None and major in (None, -1)))
            and (minor == default_minor or (default_minor is None and minor in (None, -1)))
            and set(access) <= set(default_access)
        ):
            return True
    return False


def is_bind(mount: Mapping[str, Any]) -> bool:
    """runc binds when the type is `bind` or the options ask for it, whatever the type."""
    return mount.get("type") == "bind" or bool(BIND_OPTIONS & set(mount.get("options") or []))


def _mount_violations(mounts: Any, roots: Sequence[Path]) -> list[str]:
    if mounts is None:
        return []
    if not isinstance(mounts, list):
        return ["spec.mounts: must be a list"]
    found = []
    for index, mount in enumerate(mounts):
        field = f"spec.mounts[{index}]"
        if not isinstance(mount, Mapping):
            found.append(f"{field}: must be an object")
        elif is_bind(mount):
            given = str(mount.get("source") or "")
            source = Path(os.path.realpath(given))
            if not os.path.isabs(given):  # runc would join it to the bundle, not to our cwd
                found.append(f"{field}.source: {given!r} is not an absolute host path")
            elif not any(source == root or root in source.parents for root in roots):
                found.append(
                    f"{field}.source: host path {source} (resolved) is outside the --allow-bind directories "
                    f"({', '.join(map(str, roots)) or 'none'})"
                )
        elif not isinstance(mount.get("type"), str) or mount["type"] not in MOUNT_TYPES:
            found.append(
                f"{field}.type: {mount.get('type')!r} mounts host data; only bind, {', '.join(sorted(MOUNT_TYPES))}"
            )
        else:
            kind = str(mount["type"])
            destination = os.path.normpath(str(mount.get("destination") or ""))
            pinned = PINNED_DESTINATIONS.get(kind)
            if pinned is not None and destination != pinned:
                found.append(f"{field}.destination: {kind} only at {pinned}, where masked and read-only paths apply")
            if kind in READ_ONLY_TYPES and "ro" not in (mount.get("options") or []):
                found.append(f"{field}.options: a {kind} mount must be read-only (\"ro\")")
    return found


def resolve_binds(config: dict[str, Any]) -> None:
    """Give every bind mount its resolved source, so the runtime mounts what was checked
    even if a link in the path changes later."""
    for mount in config.get("mounts") or []:
        if isinstance(mount, dict) and is_bind(mount) and mount.get("source"):
            mount["source"] = os.path.realpath(mount["source"])


class SpecPolicy:
    """The rules, the daemon's settings they depend on, and the default seccomp profile.

    `seccomp` None with `seccomp_missing` set: the profile file is not installed; tasks
    that need it are refused with UNAVAILABLE saying what to install."""

    def __init__(
        self,
        namespaces: NamespaceStore,
        allow_privileged: bool = False,
        allowed_bind_roots: Sequence[Path] = (),
        seccomp: SeccompProfile | None = None,
        seccomp_missing: str | None = None,
    ) -> None:
        self._namespaces = namespaces
        self._allow_privileged = allow_privileged
        self._roots = tuple(allowed_bind_roots)
        self._seccomp = seccomp
        self._seccomp_missing = seccomp_missing or f"no default seccomp profile is loaded ({DEFAULT_PROFILE_PATH})"

    async def privileged(self, namespace: str) -> bool:
        """Whether the daemon or the namespace's label lifts the rules."""
        if self._allow_privileged:
            return True
        try:
            labels = (await self._namespaces.get(namespace)).labels
        except CargoholdError as error:
            if error.kind is ErrorKind.NOT_FOUND:
                return False  # made on first use: no labels yet
            raise
        return labels.get(POLICY_LABEL) == PRIVILEGED

    def check(self, namespace: str, spec: Mapping[str, Any], privileged: bool) -> None:
        """Raises VALIDATION naming every field of `spec` that reaches the host, unless
        `privileged`; UNAVAILABLE when the spec's own seccomp profile would need comparing
        with a default profile that is not installed."""
        if privileged:
            return
        linux = spec.get("linux")
        if self._seccomp is None and isinstance(linux, Mapping) and linux.get("seccomp") is not None:
            raise CargoholdError(ErrorKind.UNAVAILABLE, self._seccomp_missing)
        violations = spec_violations(spec, self._roots, self._seccomp)
        if violations:
            raise _refusal(namespace, violations)

    async def check_spec(self, namespace: str, spec: Mapping[str, Any]) -> None:
        """`check` with the namespace's current label. Raises VALIDATION."""
        self.check(namespace, spec, await self.privileged(namespace))

    async def check_process(self, namespace: str, process: Mapping[str, Any], field: str = "process") -> None:
        """An exec process: capabilities beyond the default set are refused. Raises VALIDATION."""
        if await self.privileged(namespace):
            return
        violations = capability_violations(process, field)
        if violations:
            raise _refusal(namespace, violations)

    async def runnable(self, namespace: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        """The spec checked again and made safe to run: the daemon's defaults, bind sources
        resolved, and the default seccomp profile when the spec gives none. Raises
        VALIDATION, or UNAVAILABLE when the default profile is needed and not installed."""
        privileged = await self.privileged(namespace)
        self.check(namespace, spec, privileged)
        config = with_defaults(dict(spec))  # a deep copy: the stored spec stays as it is
        if not privileged:
            resolve_binds(config)
        linux = config.setdefault("linux", {})
        if linux.get("seccomp") is None:
            if self._seccomp is None:
                raise CargoholdError(ErrorKind.UNAVAILABLE, self._seccomp_missing)
            linux["seccomp"] = self._seccomp.for_capabilities(_bounding(config.get("process")))
        return config


def load_seccomp(path: Path | None) -> tuple[SeccompProfile | None, str | None]:
    """The default profile: `path` when the operator named one (which must load: raises
    ValueError otherwise), else Debian's file if installed. Returns the profile, or None
    and what to say to whoever needs it."""
    if path is not None:
        try:
            return SeccompProfile.load(path), None
        except FileNotFoundError:
            raise ValueError(f"--seccomp-profile {path}: no such file") from None
    try:
        return SeccompProfile.load(DEFAULT_PROFILE_PATH), None
    except FileNotFoundError:
        return None, (
            f"the default seccomp profile {DEFAULT_PROFILE_PATH} is not installed: apt-get install "
            f"{PROFILE_PACKAGE} (or start the daemon with --seccomp-profile FILE); tasks need it"
        )
