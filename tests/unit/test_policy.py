"""The spec policy's pieces without a daemon: Docker's seccomp profile format turned into
OCI `linux.seccomp` (includes and excludes by capability, architecture and kernel, as
moby's `setupSeccomp`), on small profiles and on the file Debian installs; what counts as
weaker than the default; and loading the profile."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from app import policy
from app.policy import load_seccomp, spec_violations
from app.runtime.defaults import DEFAULT_CAPABILITIES
from app.runtime.seccomp import DEFAULT_PROFILE_PATH, SeccompProfile, parse_kernel, weaker_than

ALLOW, ERRNO = "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO"

SMALL: dict[str, Any] = {
    "defaultAction": ERRNO,
    "defaultErrnoRet": 38,
    "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
    ],
    "syscalls": [
        {"names": ["read", "write"], "action": ALLOW, "args": [], "includes": {}, "excludes": {}},
        {"name": "getpid", "action": ALLOW},
        {"names": ["bpf"], "action": ALLOW, "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["bpf"], "action": ERRNO, "errnoRet": 1, "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["arch_prctl"], "action": ALLOW, "includes": {"arches": ["amd64", "x32"]}},
        {"names": ["set_tls"], "action": ALLOW, "includes": {"arches": ["arm", "arm64"]}},
        {"names": ["ptrace"], "action": ALLOW, "excludes": {"arches": ["arm64"]}},
        {"names": ["new_call"], "action": ALLOW, "includes": {"minKernel": "5.10"}},
        {"names": ["old_call"], "action": ALLOW, "excludes": {"minKernel": "5.10"}},
        {"names": ["two_caps"], "action": ALLOW, "includes": {"caps": ["CAP_SYS_ADMIN", "CAP_NET_ADMIN"]}},
        {"names": ["personality"], "action": ALLOW,
         "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
    ],
}


def names(seccomp: dict[str, Any], action: str = ALLOW) -> set[str]:
    return {name for rule in seccomp["syscalls"] if rule["action"] == action for name in rule["names"]}


def small(tmp_path: Path) -> SeccompProfile:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(SMALL))
    return SeccompProfile.load(path)


class TestForCapabilities:
    def test_default_capabilities_on_amd64(self, tmp_path: Path) -> None:
        oci = small(tmp_path).for_capabilities(DEFAULT_CAPABILITIES, goarch="amd64", kernel=(6, 1))
        assert oci["defaultAction"] == ERRNO and oci["defaultErrnoRet"] == 38
        assert oci["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
        assert names(oci) == {"read", "write", "getpid", "arch_prctl", "ptrace", "new_call", "personality"}
        assert names(oci, ERRNO) == {"bpf"}
        assert [rule for rule in oci["syscalls"] if rule["names"] == ["bpf"]] == [
            {"names": ["bpf"], "action": ERRNO, "errnoRet": 1}
        ]
        assert {"names": ["read", "write"], "action": ALLOW} in oci["syscalls"], "empty args are left out"

    def test_capability_includes_and_excludes(self, tmp_path: Path) -> None:
        oci = small(tmp_path).for_capabilities(["CAP_SYS_ADMIN"], goarch="amd64", kernel=(6, 1))
        assert "bpf" in names(oci) and "bpf" not in names(oci, ERRNO)
        assert "two_caps" not in names(oci), "every included capability must be held"
        both = small(tmp_path).for_capabilities(["CAP_SYS_ADMIN", "CAP_NET_ADMIN"], goarch="amd64", kernel=(6, 1))
        assert "two_caps" in names(both)

    def test_architecture(self, tmp_path: Path) -> None:
        oci = small(tmp_path).for_capabilities([], goarch="arm64", kernel=(6, 1))
        assert oci["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
        assert "set_tls" in names(oci) and "arch_prctl" not in names(oci) and "ptrace" not in names(oci)
        unknown = small(tmp_path).for_capabilities([], goarch="riscv64", kernel=(6, 1))
        assert "architectures" not in unknown, "libseccomp then takes the native one"

    def test_kernel(self, tmp_path: Path) -> None:
        old = small(tmp_path).for_capabilities([], goarch="amd64", kernel=(5, 4))
        assert "old_call" in names(old) and "new_call" not in names(old)
        assert parse_kernel("6.1.0-13-amd64") == (6, 1)


class TestTheInstalledProfile:
    """The file Debian's golang-github-containers-common installs (`make` installs it)."""

    @pytest.fixture
    def installed(self) -> SeccompProfile:
        if not DEFAULT_PROFILE_PATH.exists():
            if os.environ.get("CI") == "true":
                pytest.fail(f"{DEFAULT_PROFILE_PATH} is missing: apt-get install golang-github-containers-common")
            pytest.skip(f"{DEFAULT_PROFILE_PATH} is not installed")
        return SeccompProfile.load(DEFAULT_PROFILE_PATH)

    def test_default_capabilities(self, installed: SeccompProfile) -> None:
        oci = installed.for_capabilities(DEFAULT_CAPABILITIES, goarch="amd64", kernel=(6, 1))
        assert oci["defaultAction"] == ERRNO
        assert {"read", "mount", "clone", "arch_prctl"} <= names(oci)
        assert {"swapon", "kexec_load", "bpf", "init_module", "open_by_handle_at"} <= names(oci, ERRNO)
        assert weaker_than(oci, oci) == [], "the default is as strict as itself"

    def test_capabilities_open_their_syscalls(self, installed: SeccompProfile) -> None:
        oci = installed.for_capabilities([*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"], goarch="amd64", kernel=(6, 1))
        assert "bpf" in names(oci) and "bpf" not in names(oci, ERRNO)
        assert "swapon" in names(oci, ERRNO), "refused whatever the capabilities"


@pytest.mark.parametrize(
    ("given", "fields"),
    [
        pytest.param({"defaultAction": ALLOW}, [".defaultAction"], id="allow-all"),
        pytest.param({"defaultAction": "SCMP_ACT_TRACE"}, [".defaultAction"], id="trace-all"),
        pytest.param({}, [".defaultAction"], id="no-default-action"),
        pytest.param("unconfined", [""], id="not-an-object"),
        pytest.param({"defaultAction": "SCMP_ACT_KILL_PROCESS"}, [], id="kill-all"),
        pytest.param({"defaultAction": ERRNO, "syscalls": [{"names": ["read"], "action": ALLOW}]}, [], id="subset"),
        pytest.param({"defaultAction": ERRNO, "syscalls": [{"names": ["bpf"], "action": ALLOW}]}, [".syscalls[0]"],
                     id="denied-syscall"),
        pytest.param({"defaultAction": ERRNO, "syscalls": [{"names": ["bpf"], "action": ERRNO}]}, [], id="deny-more"),
        pytest.param({"defaultAction": ERRNO, "syscalls": [{"names": ["personality"], "action": "SCMP_ACT_LOG"}]},
                     [".syscalls[0]"], id="condition-dropped"),
        pytest.param({"defaultAction": ERRNO, "syscalls": [{"names": ["personality"], "action": ALLOW, "args": [
            {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}, {"index": 1, "value": 0, "op": "SCMP_CMP_EQ"}]}]},
            [], id="condition-narrowed"),
        pytest.param({"defaultAction": ERRNO, "syscalls": [{"names": ["personality"], "action": ALLOW, "args": [
            {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 9, "op": "SCMP_CMP_EQ"}]}]},
            [".syscalls[0]"], id="conditions-on-one-argument-are-ored"),
        pytest.param({"defaultAction": ERRNO, "listenerPath": "/run/x.sock"}, [".listenerPath"], id="agent"),
        pytest.param({"defaultAction": ERRNO, "flags": ["SECCOMP_FILTER_FLAG_SPEC_ALLOW"]}, [".flags"],
                     id="spec-allow"),
        pytest.param({"defaultAction": ERRNO, "flags": ["SECCOMP_FILTER_FLAG_LOG"]}, [], id="log-flag"),
    ],
)
def test_weaker_than(tmp_path: Path, given: Any, fields: list[str]) -> None:
    default = small(tmp_path).for_capabilities(DEFAULT_CAPABILITIES, goarch="amd64", kernel=(6, 1))
    assert [field for field, _ in weaker_than(given, default)] == fields


class TestLoad:
    @pytest.mark.parametrize(
        ("content", "says"),
        [
            pytest.param("{", "not JSON", id="not-json"),
            pytest.param("[]", "no defaultAction", id="list"),
            pytest.param('{"syscalls": []}', "no defaultAction", id="no-default-action"),
            pytest.param('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": {}}', "must be a list", id="syscalls-object"),
            pytest.param('{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"], '
                         '"archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}', "give one", id="both-arch-lists"),
            pytest.param('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"]}]}',
                         r"syscalls\[0\] needs an action", id="rule-without-action"),
            pytest.param('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}',
                         "names no syscall", id="rule-without-names"),
            pytest.param('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], '
                         '"action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "new"}}]}',
                         "not a kernel version", id="bad-min-kernel"),
        ],
    )
    def test_bad_files(self, tmp_path: Path, content: str, says: str) -> None:
        path = tmp_path / "profile.json"
        path.write_text(content)
        with pytest.raises(ValueError, match=says):
            load_seccomp(path)

    def test_a_named_file_must_exist(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="no such file"):
            load_seccomp(tmp_path / "missing.json")

    def test_without_the_package_it_says_what_to_install(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(policy, "DEFAULT_PROFILE_PATH", tmp_path / "not-installed.json")
        profile, missing = load_seccomp(None)
        assert profile is None
        assert missing is not None and "apt-get install golang-github-containers-common" in missing


def test_violations_of_a_spec_from_runc_spec_are_none() -> None:
    """What `runc spec` writes (runc 1.1, its defaults) stays inside the policy."""
    from app.runtime.defaults import DEFAULT_LINUX, DEFAULT_MOUNTS

    runc_spec = {
        "ociVersion": "1.0.2", "root": {"path": "rootfs", "readonly": True},
        "process": {"args": ["sh"], "cwd": "/", "capabilities": {
            kind: DEFAULT_CAPABILITIES for kind in ("bounding", "effective", "permitted", "ambient")}},
        "mounts": DEFAULT_MOUNTS,
        "linux": {**DEFAULT_LINUX, "resources": {"devices": [{"allow": False, "access": "rwm"}]}},
    }
    assert spec_violations(runc_spec, [], None) == []
