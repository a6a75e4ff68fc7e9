"""The default seccomp profile: Docker's profile format turned into one task's OCI
`linux.seccomp`, and the test of whether a spec's own profile is at least as strict.

The profile is data, not code: the file Docker, containerd and Podman ship (Debian's
`golang-github-containers-common` installs it as /usr/share/containers/seccomp.json).
Its format is moby's (`profiles/seccomp`): `defaultAction`, `archMap`, and `syscalls`
whose `includes`/`excludes` name capabilities, architectures and a minimal kernel.
`SeccompProfile.for_capabilities` does what moby's `setupSeccomp` does for a container:
keep the rules whose includes all hold for this host and this process's bounding set,
drop those an exclude matches, and list this architecture with its sub-architectures.

This module reads one file at start-up; it runs nothing and changes nothing.
"""

from __future__ import annotations

import json
import platform
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_PROFILE_PATH = Path("/usr/share/containers/seccomp.json")
PROFILE_PACKAGE = "golang-github-containers-common"

# Go's GOARCH for `uname -m`: the profile's `includes.arches` speak Go (moby compares
# them with runtime.GOARCH).
_GOARCH = {
    "x86_64": "amd64", "amd64": "amd64", "i386": "386", "i686": "386", "aarch64": "arm64", "arm64": "arm64",
    "armv7l": "arm", "armv6l": "arm", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
    "mips64": "mips64", "mips64el": "mips64le", "loongarch64": "loong64",
}
# libseccomp's name of each GOARCH's native architecture (moby's nativeToSeccomp).
_SECCOMP_ARCH = {
    "amd64": "SCMP_ARCH_X86_64", "386": "SCMP_ARCH_X86", "arm64": "SCMP_ARCH_AARCH64", "arm": "SCMP_ARCH_ARM",
    "ppc64le": "SCMP_ARCH_PPC64LE", "s390x": "SCMP_ARCH_S390X", "riscv64": "SCMP_ARCH_RISCV64",
    "mips64": "SCMP_ARCH_MIPS64", "mips64le": "SCMP_ARCH_MIPSEL64", "loong64": "SCMP_ARCH_LOONGARCH64",
}
# Actions that stop a syscall; every other one (ALLOW, LOG, TRACE, NOTIFY) lets it run
# or hands the decision to something outside the filter.
DENYING_ACTIONS = frozenset({
    "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP", "SCMP_ACT_ERRNO",
})
# Turns off the speculative store bypass mitigation for the process. (A tuple: a flag
# may be any JSON, and `in` on a tuple compares instead of hashing.)
_WEAKENING_FLAGS = ("SECCOMP_FILTER_FLAG_SPEC_ALLOW",)


def host_goarch() -> str:
    machine = platform.machine()
    return _GOARCH.get(machine, machine)


def host_kernel() -> tuple[int, int]:
    """The running kernel's major.minor (`6.1.0-13-amd64` -> (6, 1))."""
    return parse_kernel(platform.release())


def parse_kernel(release: str) -> tuple[int, int]:
    found = re.match(r"(\d+)\.(\d+)", release)
    if found is None:
        raise ValueError(f"not a kernel version: {release!r}")
    return int(found[1]), int(found[2])


@dataclass(frozen=True)
class SeccompProfile:
    """A profile in Docker's format, as loaded from `path`."""

    document: dict[str, Any]
    path: Path

    @classmethod
    def load(cls, path: Path) -> SeccompProfile:
        """Raises FileNotFoundError, or ValueError saying what is wrong with the file."""
        try:
            document = json.loads(path.read_bytes())
        except json.JSONDecodeError as error:
            raise ValueError(f"seccomp profile {path} is not JSON: {error}") from None
        if not isinstance(document, dict) or not isinstance(document.get("defaultAction"), str):
            raise ValueError(f"seccomp profile {path} has no defaultAction: not a Docker seccomp profile")
        if not isinstance(document.get("syscalls", []), list):
            raise ValueError(f"seccomp profile {path}: syscalls must be a list")
        if document.get("architectures") and document.get("archMap"):
            raise ValueError(f"seccomp profile {path} gives both architectures and archMap; give one")
        for index, rule in enumerate(document.get("syscalls") or []):
            problem = _rule_problem(rule)
            if problem:
                raise ValueError(f"seccomp profile {path}: syscalls[{index}] {problem}")
        return cls(document, path)

    def for_capabilities(
        self, bounding: Iterable[str], goarch: str | None = None, kernel: tuple[int, int] | None = None
    ) -> dict[str, Any]:
        """The OCI `linux.seccomp` for a process whose bounding set is `bounding`, on this
        host's architecture and kernel unless told otherwise (moby's `setupSeccomp`)."""
        arch = goarch or host_goarch()
        running = kernel or host_kernel()
        caps = frozenset(bounding)
        profile = self.document
        result: dict[str, Any] = {"defaultAction": profile["defaultAction"]}
        architectures = list(profile.get("architectures") or [])
        native = _SECCOMP_ARCH.get(arch)
        for entry in profile.get("archMap") or []:
            if entry.get("architecture") == native:
                architectures += [entry["architecture"], *(entry.get("subArchitectures") or [])]
                break
        if architectures:
            result["architectures"] = architectures
        for key in ("defaultErrnoRet", "flags", "listenerPath", "listenerMetadata"):
            if profile.get(key) is not None:
                result[key] = profile[key]
        syscalls = []
        for rule in profile.get("syscalls") or []:
            if _applies(rule, arch, caps, running):
                names = list(rule.get("names") or []) + ([rule["name"]] if rule.get("name") else [])
                converted: dict[str, Any] = {"names": names, "action": rule["action"]}
                if rule.get("args"):
                    converted["args"] = rule["args"]
                if rule.get("errnoRet") is not None:
                    converted["errnoRet"] = rule["errnoRet"]
                syscalls.append(converted)
        result["syscalls"] = syscalls
        return result


def _rule_problem(rule: Any) -> str | None:
    """What keeps a rule of Docker's format from being converted, if anything."""
    if not isinstance(rule, Mapping) or not isinstance(rule.get("action"), str):
        return "needs an action"
    names = rule.get("names") or []
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        return "names must be a list of syscall names"
    if not names and not isinstance(rule.get("name"), str):
        return "names no syscall"
    for key in ("includes", "excludes"):
        condition = rule.get(key) or {}
        if not isinstance(condition, Mapping):
            return f"{key} must be an object"
        if condition.get("minKernel"):
            try:
                parse_kernel(str(condition["minKernel"]))
            except ValueError as error:
                return f"{key}.minKernel: {error}"
    return None


def _applies(rule: Mapping[str, Any], arch: str, caps: frozenset[str], kernel: tuple[int, int]) -> bool:
    """moby's filter: any matching exclude drops the rule; every include must hold."""
    excludes = rule.get("excludes") or {}
    if arch in (excludes.get("arches") or []):
        return False
    if caps & set(excludes.get("caps") or []):
        return False
    if excludes.get("minKernel") and kernel >= parse_kernel(excludes["minKernel"]):
        return False
    includes = rule.get("includes") or {}
    if includes.get("arches") and arch not in includes["arches"]:
        return False
    if not set(includes.get("caps") or []) <= caps:
        return False
    return not (includes.get("minKernel") and kernel < parse_kernel(includes["minKernel"]))


def weaker_than(given: Any, default: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """How the spec's own `linux.seccomp` lets through what `default` (the default profile
    for the same process, in OCI form) stops: (field under linux.seccomp, reason) pairs;
    empty when it is at least as strict. Without `default`, only the rules that need no
    comparison are checked (a denying default action, no host agent, no weakening flag).

    A syscall the spec lets through must be let through by the default too, with no
    condition or with conditions the spec's rule also imposes."""
    if not isinstance(given, Mapping):
        return [("", "must be an object with a defaultAction")]
    found: list[tuple[str, str]] = []
    action = given.get("defaultAction")
    if not denies(action):
        found.append((".defaultAction", f"{action} lets through every syscall the default profile refuses"))
    if given.get("listenerPath"):
        found.append((".listenerPath", "hands syscall decisions to an agent on the host"))
    flags = given.get("flags")
    weakening = sorted(flag for flag in (flags if isinstance(flags, list) else []) if flag in _WEAKENING_FLAGS)
    if weakening:
        found.append((".flags", f"{', '.join(weakening)} turns off a protection of the default profile"))
    rules = given.get("syscalls") or []
    if not isinstance(rules, list):
        return [*found, (".syscalls", "must be a list")]
    if default is None:
        return found
    permitted = _permitted(default.get("syscalls") or [])
    for index, rule in enumerate(rules):
        if not isinstance(rule, Mapping) or denies(rule.get("action")):
            continue
        args = rule.get("args") or []
        names = list(rule.get("names") or []) + ([rule["name"]] if rule.get("name") else [])
        let_through = [
            str(name) for name in names
            if not (isinstance(name, str) and isinstance(args, list) and _covered(args, permitted.get(name, [])))
        ]
        if let_through:
            found.append((
                f".syscalls[{index}]",
                f"{rule.get('action')} of {', '.join(let_through)} goes beyond the default profile",
            ))
    return found


def denies(action: Any) -> bool:
    return isinstance(action, str) and action in DENYING_ACTIONS


def _permitted(rules: Sequence[Mapping[str, Any]]) -> dict[str, list[list[dict[str, Any]]]]:
    """For each syscall the default lets through, the condition lists it does so under.
    A later deny of the same syscall does not count: the profile lists some (setns ...)
    as allowed, then denies them to a process without the capability, and runc 1.1 with
    libseccomp 2.5 keeps the first of two unconditional rules (measured), so they run."""
    found: dict[str, list[list[dict[str, Any]]]] = {}
    for rule in rules:
        if not denies(rule.get("action")):
            for name in rule.get("names") or []:
                found.setdefault(name, []).append(list(rule.get("args") or []))
    return found


def _covered(args: list[Any], allowed_under: list[list[dict[str, Any]]]) -> bool:
    """True when a rule with conditions `args` lets through no more than one of the default's
    rules: that rule has no condition, or the same ones (the spec may add more, on
    arguments it does not already test: conditions on one argument are ORed by runc)."""
    indexes = [str(arg.get("index")) for arg in args if isinstance(arg, Mapping)]
    distinct = len(indexes) == len(set(indexes)) == len(args)
    for conditions in allowed_under:
        if not conditions:
            return True
        if all(_normal(c) in [_normal(a) for a in args] for c in conditions) and (distinct or args == conditions):
            return True
    return False


def _normal(condition: Any) -> tuple[Any, ...]:
    if not isinstance(condition, Mapping):
        return (condition,)
    return (condition.get("index"), condition.get("value", 0), condition.get("valueTwo", 0), condition.get("op"))
