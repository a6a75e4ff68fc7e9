"""The spec policy through the API: each rule refuses a real spec at container create and
update with a 422 naming the field and changing nothing (no row, no event); the daemon's
--allow-privileged and the namespace label `cargohold.policy=privileged` lift it; only a
unix-socket caller may set or remove that label.

Task create and exec, where the rules are checked again, need a runtime: they are in
tests/runtime/test_policy_runtime.py.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.runtime.defaults import DEFAULT_CAPABILITIES, DEFAULT_LINUX
from tests.api.containers import (
    MERGE_PATCH,
    Json,
    assert_problem,
    unchanged,
)
from tests.api.served import (
    CARGOHOLD,
    MAIN,
    serving,
)
from tests.conftest import container_body, in_process_client, spec

pytestmark = pytest.mark.anyio

LABEL = "cargohold.policy"
NAMESPACES = [{"type": kind} for kind in ("pid", "network", "ipc", "uts", "mount")]
DOCKER_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
]


def process(**fields: Any) -> Json:
    return {"args": ["/bin/sh", "-c", "true"], "cwd": "/", **fields}


def caps(kind: str, extra: str) -> Json:
    return {"process": process(capabilities={kind: [*DEFAULT_CAPABILITIES, extra]})}


def linux(**fields: Any) -> Json:
    return {"linux": fields}


def mount(**fields: Any) -> Json:
    return {"mounts": [fields]}


def hook(kind: str) -> Json:
    return {"hooks": {kind: [{"path": "/bin/sh", "args": ["sh", "-c", "touch /tmp/pwned"]}]}}


def without(kind: str) -> Json:
    return linux(namespaces=[entry for entry in NAMESPACES if entry["type"] != kind])


# (spec fields, what the detail must name) for specs the default policy refuses.
# ALLOWED (below) is the directory --allow-bind names in these tests.
REFUSED: list[Any] = [
    *[pytest.param(hook(kind), f"spec.hooks.{kind}", id=f"hook-{kind}") for kind in (
        "prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")],
    *[pytest.param({"annotations": {key: value}}, f'spec.annotations."{key}"', id=f"annotation-{key}")
      for key, value in (
        ("run.oci.hooks.stdout", "/etc/cron.d/pwned"),
        ("run.oci.seccomp.plugins", "/tmp/evil.so"),
        ("run.oci.seccomp_bpf_data", "AAAA"),
        ("run.oci.seccomp.receiver", "/run/agent.sock"),
        ("run.oci.systemd.force_cgroup_v1", "/sys/fs/cgroup/systemd"),
        ("org.systemd.property.DeviceAllow", "'/dev/sda rwm'"),
    )],
    pytest.param(
        linux(namespaces=[*NAMESPACES[:2], {"type": "ipc", "path": "/proc/1/ns/ipc"}, *NAMESPACES[3:]]),
        "spec.linux.namespaces[2].path", id="namespace-path",
    ),
    *[pytest.param(without(kind), f"no {kind} namespace", id=f"no-{kind}-namespace")
      for kind in ("pid", "mount", "ipc", "uts")],
    pytest.param(linux(namespaces=[]), "no pid, mount, ipc, uts namespace", id="no-namespaces"),
    pytest.param(
        linux(devices=[{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}]), "spec.linux.devices[0]",
        id="device-node",
    ),
    pytest.param(
        linux(devices=[{"path": "/dev/null", "type": "c", "major": 1, "minor": 3},
                       {"path": "/dev/mem", "type": "c", "major": 1, "minor": 1}]),
        "spec.linux.devices[1]", id="device-node-after-default",
    ),
    pytest.param(
        linux(resources={"devices": [{"allow": True}]}), "spec.linux.resources.devices[0]", id="device-rule-allow-all"
    ),
    pytest.param(
        linux(resources={"devices": [{"allow": False, "access": "rwm"},
                                     {"allow": True, "type": "b", "major": 8, "access": "rwm"}]}),
        "spec.linux.resources.devices[1]", id="device-rule-block-disks",
    ),
    pytest.param(
        linux(resources={"devices": [{"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                                     {"allow": True, "type": "a", "access": "rwm"}]}),
        "spec.linux.resources.devices[1]", id="device-rule-type-a",
    ),
    *[pytest.param(caps(kind, "CAP_SYS_ADMIN"), f"spec.process.capabilities.{kind}", id=f"cap-{kind}")
      for kind in ("bounding", "effective", "permitted", "inheritable", "ambient")],
    pytest.param(caps("bounding", "SYS_MODULE"), "spec.process.capabilities.bounding", id="cap-without-prefix"),
    pytest.param(caps("effective", "cap_sys_ptrace"), "spec.process.capabilities.effective", id="cap-lower-case"),
    pytest.param(
        mount(destination="/mnt", type="overlay", source="overlay",
              options=["lowerdir=/etc,upperdir=/tmp/u,workdir=/tmp/w"]),
        "spec.mounts[0].type", id="mount-overlay-of-etc",
    ),
    pytest.param(mount(destination="/mnt", type="ext4", source="/dev/sda1"), "spec.mounts[0].type", id="mount-ext4"),
    pytest.param(mount(destination="/mnt", type="nfs", source="host:/"), "spec.mounts[0].type", id="mount-nfs"),
    pytest.param(
        mount(destination="/mnt", type="bind", source="/etc", options=["rbind", "ro"]), "spec.mounts[0].source",
        id="bind-outside",
    ),
    pytest.param(
        mount(destination="/mnt", type="none", source="/etc", options=["rbind"]), "spec.mounts[0].source",
        id="bind-by-options",
    ),
    pytest.param(
        mount(destination="/mnt", type="bind", source="ALLOWED/../../etc", options=["bind"]), "spec.mounts[0].source",
        id="bind-dot-dot",
    ),
    pytest.param(
        mount(destination="/mnt", type="bind", source="data", options=["rbind"]), "spec.mounts[0].source: 'data'",
        id="bind-relative",
    ),
    pytest.param(
        mount(destination="/mnt", type="bind", source="ALLOWED/root-link", options=["rbind"]),
        "spec.mounts[0].source: host path / (resolved)", id="bind-symlink-to-root",
    ),
    pytest.param(
        mount(destination="/mnt", type="bind", source="ALLOWED/root-link/etc", options=["rbind"]),
        "spec.mounts[0].source: host path /etc (resolved)", id="bind-through-symlink",
    ),
    pytest.param(
        mount(destination="/proc2", type="proc", source="proc"), "spec.mounts[0].destination", id="proc-elsewhere"
    ),
    pytest.param(
        mount(destination="/sys", type="sysfs", source="sysfs", options=["nosuid"]), "spec.mounts[0].options",
        id="sysfs-writable",
    ),
    pytest.param(
        mount(destination="/sys/fs/cgroup", type="cgroup", source="cgroup"), "spec.mounts[0].options",
        id="cgroup-writable",
    ),
    pytest.param(linux(maskedPaths=[]), "spec.linux.maskedPaths", id="masked-paths-emptied"),
    pytest.param(linux(maskedPaths=None), "spec.linux.maskedPaths", id="masked-paths-null"),
    pytest.param(
        linux(readonlyPaths=[p for p in DEFAULT_LINUX["readonlyPaths"] if p != "/proc/sysrq-trigger"]),
        "spec.linux.readonlyPaths: drops /proc/sysrq-trigger", id="readonly-path-dropped",
    ),
    pytest.param(
        linux(seccomp={"defaultAction": "SCMP_ACT_ALLOW"}), "spec.linux.seccomp.defaultAction", id="seccomp-allow-all"
    ),
    pytest.param(
        linux(seccomp={"defaultAction": "SCMP_ACT_LOG"}), "spec.linux.seccomp.defaultAction", id="seccomp-log-all"
    ),
    pytest.param(
        linux(seccomp={"defaultAction": "SCMP_ACT_ERRNO",
                       "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                                    {"names": ["swapon", "kexec_load"], "action": "SCMP_ACT_ALLOW"}]}),
        "spec.linux.seccomp.syscalls[1]: SCMP_ACT_ALLOW of swapon, kexec_load", id="seccomp-allows-more",
    ),
    pytest.param(
        linux(seccomp={"defaultAction": "SCMP_ACT_ERRNO",
                       "syscalls": [{"names": ["personality"], "action": "SCMP_ACT_ALLOW"}]}),
        "spec.linux.seccomp.syscalls[0]", id="seccomp-drops-a-condition",
    ),
    pytest.param(
        linux(seccomp={"defaultAction": "SCMP_ACT_ERRNO",
                       "syscalls": [{"names": ["bpf"], "action": "SCMP_ACT_ALLOW"}]}),
        "spec.linux.seccomp.syscalls[0]: SCMP_ACT_ALLOW of bpf", id="seccomp-allows-capability-syscall",
    ),
    pytest.param(
        linux(seccomp={"defaultAction": "SCMP_ACT_ERRNO", "listenerPath": "/run/agent.sock",
                       "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]}),
        "spec.linux.seccomp.listenerPath", id="seccomp-host-agent",
    ),
    pytest.param(linux(seccomp="unconfined"), "spec.linux.seccomp", id="seccomp-not-object"),
    pytest.param(linux(netDevices={"eth0": {}}), "spec.linux.netDevices", id="net-devices"),
]

# Specs that stay within the policy (each differs from the minimal spec in one way).
ACCEPTED: list[Any] = [
    pytest.param({"hooks": {}}, id="hooks-empty"),
    pytest.param({"hooks": {"prestart": []}}, id="hooks-empty-list"),
    pytest.param({"annotations": {"run.oci.seccomp_fail_unknown_syscall": "1", "org.example": "x"}},
                 id="harmless-annotations"),
    pytest.param(linux(namespaces=NAMESPACES, **{k: v for k, v in DEFAULT_LINUX.items() if k != "namespaces"}),
                 id="defaults-restated"),
    pytest.param(linux(namespaces=[e for e in NAMESPACES if e["type"] != "network"]), id="no-network-namespace"),
    pytest.param(linux(namespaces=[*NAMESPACES, {"type": "cgroup", "path": ""}]), id="namespace-empty-path"),
    pytest.param(linux(maskedPaths=[*DEFAULT_LINUX["maskedPaths"], "/proc/extra"]), id="masked-paths-added"),
    pytest.param({"process": process(capabilities={k: DOCKER_CAPABILITIES for k in (
        "bounding", "effective", "permitted", "inheritable", "ambient")})}, id="docker-capabilities"),
    pytest.param({"process": process(capabilities={"bounding": ["kill", "chown"]})}, id="capabilities-short-names"),
    pytest.param(linux(devices=[{"path": "/dev/null", "type": "c", "major": 1, "minor": 3}]), id="default-device"),
    pytest.param(linux(resources={"devices": [
        {"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"},
        {"allow": True, "type": "c", "major": 136, "access": "rwm"}, {"allow": True, "type": "b", "access": "m"},
    ]}), id="default-device-rules"),
    pytest.param({"mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro", "nosuid"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue"},
        {"destination": "/data", "type": "bind", "source": "ALLOWED/data", "options": ["rbind", "ro"]},
        {"destination": "/all", "source": "ALLOWED", "options": ["bind"]},
    ]}, id="kernel-mounts-and-binds-inside"),
    pytest.param(linux(seccomp={"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
        {"names": ["swapon"], "action": "SCMP_ACT_KILL"},
    ]}), id="seccomp-stricter"),
    pytest.param(linux(seccomp=None), id="seccomp-null"),
    pytest.param({"linux": None}, id="linux-null"),
]


def fill(document: Any, allowed: Path) -> Any:
    """`document` with ALLOWED replaced by the allowed directory's path."""
    return json.loads(json.dumps(document).replace("ALLOWED", str(allowed)))


def body_with(container_id: str, fields: Json, allowed: Path) -> Json:
    return container_body(container_id, spec=spec(**fill(fields, allowed)))


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    """The --allow-bind directory, holding a real directory and a symlink to `/`."""
    directory = tmp_path / "allowed"
    (directory / "data").mkdir(parents=True)
    os.symlink("/", directory / "root-link")
    return directory


@pytest.fixture
def settings(tmp_path: Path, allowed: Path) -> Settings:
    return Settings(root=tmp_path / "root", state=tmp_path / "state", listeners=(), allowed_bind_roots=(allowed,))


async def containers_of(client: httpx.AsyncClient, headers: dict[str, str]) -> list[str]:
    response = await client.get("/containers", headers=headers)
    assert response.status_code in (200, 404), response.text
    return [c["id"] for c in response.json().get("containers", [])] if response.status_code == 200 else []


class TestCreate:
    @pytest.mark.parametrize(("fields", "field"), REFUSED)
    async def test_refused(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], allowed: Path, fields: Json, field: str
    ) -> None:
        async with unchanged(client, ns_headers):
            response = await client.post("/containers", json=body_with("web", fields, allowed), headers=ns_headers)
        problem = assert_problem(response, 422, fill(field, allowed), LABEL, "--allow-privileged")
        assert problem["type"] == "urn:cargohold:problem:validation"
        assert await containers_of(client, ns_headers) == []

    @pytest.mark.parametrize("fields", ACCEPTED)
    async def test_accepted(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], allowed: Path, fields: Json
    ) -> None:
        response = await client.post("/containers", json=body_with("web", fields, allowed), headers=ns_headers)
        assert response.status_code == 201, response.text
        assert await containers_of(client, ns_headers) == ["web"]

    async def test_every_violation_is_named(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], allowed: Path
    ) -> None:
        fields = {**hook("prestart"), **caps("bounding", "CAP_SYS_ADMIN"), **mount(
            destination="/mnt", type="bind", source="/", options=["rbind"])}
        async with unchanged(client, ns_headers):
            response = await client.post("/containers", json=body_with("web", fields, allowed), headers=ns_headers)
        assert_problem(
            response, 422, "spec.hooks.prestart", "spec.process.capabilities.bounding: CAP_SYS_ADMIN",
            "spec.mounts[0].source",
        )

    @pytest.mark.parametrize(("fields", "field"), REFUSED)
    async def test_allow_privileged_lifts_it(
        self, settings: Settings, ns_headers: dict[str, str], allowed: Path, fields: Json, field: str
    ) -> None:
        async with in_process_client(replace(settings, allow_privileged=True)) as client:
            response = await client.post("/containers", json=body_with("web", fields, allowed), headers=ns_headers)
            assert response.status_code == 201, response.text
            stored = (await client.get("/containers/web", headers=ns_headers)).json()["spec"]
        # Stored as given: the policy decides, it does not rewrite.
        assert stored == {**spec(**fill(fields, allowed))}


# In a merge patch null deletes: a patch's `"maskedPaths": null` restores the defaults.
REFUSED_PATCHES = [case for case in REFUSED if case.id != "masked-paths-null"]


# Shapes no runtime would take: refused as reaching the host, never a 500.
ODD_SHAPES: list[Any] = [
    pytest.param(linux(devices=5), id="devices-int"),
    pytest.param(linux(devices=[[1]]), id="device-list"),
    pytest.param(linux(devices=[{"path": "/dev/null", "type": "c", "major": [1], "minor": 3}]), id="device-major-list"),
    pytest.param(linux(resources={"devices": {"allow": True}}), id="device-rules-object"),
    pytest.param(linux(resources={"devices": [{"allow": True, "type": ["c"]}]}), id="device-rule-type-list"),
    pytest.param(linux(namespaces=[{"type": ["pid"]}]), id="namespace-type-list"),
    pytest.param(linux(namespaces={"pid": {}}), id="namespaces-object"),
    pytest.param(linux(maskedPaths=[{"path": "/proc/kcore"}]), id="masked-path-object"),
    pytest.param(linux(seccomp={"defaultAction": ["x"], "flags": [{}], "syscalls": [{"names": [{}], "action": []}]}),
                 id="seccomp-lists-for-strings"),
    pytest.param(linux(seccomp={"defaultAction": "SCMP_ACT_ERRNO", "syscalls": 5}), id="seccomp-syscalls-int"),
    pytest.param(linux(seccomp={"defaultAction": "SCMP_ACT_ERRNO",
                                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": 5}]}),
                 id="seccomp-args-int"),
    pytest.param({"process": process(capabilities={"bounding": 5})}, id="capabilities-int"),
    pytest.param({"process": process(capabilities="all")}, id="capabilities-string"),
    pytest.param({"hooks": "all"}, id="hooks-string"),
]


@pytest.mark.parametrize("fields", ODD_SHAPES)
async def test_odd_shapes_are_refused_not_crashed(
    client: httpx.AsyncClient, ns_headers: dict[str, str], allowed: Path, fields: Json
) -> None:
    async with unchanged(client, ns_headers):
        response = await client.post("/containers", json=body_with("web", fields, allowed), headers=ns_headers)
    assert_problem(response, 422, "the spec reaches the host")


class TestUpdate:
    @pytest.mark.parametrize(("fields", "field"), REFUSED_PATCHES)
    async def test_refused(
        self, client: httpx.AsyncClient, ns_headers: dict[str, str], allowed: Path, fields: Json, field: str
    ) -> None:
        created = await client.post("/containers", json=container_body("web"), headers=ns_headers)
        assert created.status_code == 201, created.text
        patch = {"spec": fill(fields, allowed)}
        async with unchanged(client, ns_headers):
            response = await client.patch(
                "/containers/web", content=json.dumps(patch), headers={**ns_headers, "Content-Type": MERGE_PATCH}
            )
        assert_problem(response, 422, fill(field, allowed))
        assert (await client.get("/containers/web", headers=ns_headers)).json() == created.json()


class TestNamespaceLabel:
    """The label through a real daemon with a unix and a TCP listener (`cargohold serve`)."""

    @pytest.fixture
    async def daemon(self, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
        async with serving(tmp_path) as running, running.unix() as unix:
            token = (running.state / "token").read_text().strip()
            async with running.tcp(token) as tcp:
                yield unix, tcp

    async def test_lifts_the_policy_and_only_unix_sets_it(
        self, daemon: tuple[httpx.AsyncClient, httpx.AsyncClient]
    ) -> None:
        unix, tcp = daemon
        field = f'labels."{LABEL}"'
        headers = {"Cargohold-Namespace": "lab"}
        body = container_body("web", spec=spec(**hook("createRuntime")))

        # From TCP: neither a create with the label nor a patch that sets it.
        async with unchanged(unix, headers):
            refused = await tcp.post("/namespaces", json={"name": "lab", "labels": {LABEL: "privileged"}})
            assert_problem(refused, 422, field, "unix socket")
            assert (await tcp.post("/containers", json=body, headers=headers)).status_code == 422
        assert (await unix.post("/namespaces", json={"name": "lab", "labels": {"team": "a"}})).status_code == 201
        async with unchanged(unix, headers):
            refused = await tcp.patch("/namespaces/lab", content=json.dumps({"labels": {LABEL: "privileged"}}),
                                      headers={"Content-Type": MERGE_PATCH})
            assert_problem(refused, 422, field)

        # From the unix socket it is set, and lifts the policy for every caller.
        patched = await unix.patch("/namespaces/lab", content=json.dumps({"labels": {LABEL: "privileged"}}),
                                   headers={"Content-Type": MERGE_PATCH})
        assert patched.status_code == 200, patched.text
        assert patched.json()["labels"] == {"team": "a", LABEL: "privileged"}
        assert (await tcp.post("/containers", json=body, headers=headers)).status_code == 201

        # TCP may change other labels, not remove or change this one.
        other = await tcp.patch("/namespaces/lab", content=json.dumps({"labels": {"team": "b"}}),
                                headers={"Content-Type": MERGE_PATCH})
        assert other.status_code == 200, other.text
        for patch in ({"labels": {LABEL: None}}, {"labels": None}, {"labels": {LABEL: "restricted"}}):
            async with unchanged(unix, headers):
                refused = await tcp.patch("/namespaces/lab", content=json.dumps(patch),
                                          headers={"Content-Type": MERGE_PATCH})
                assert_problem(refused, 422, field)

        # Removed over the unix socket: refused again, for everyone.
        removed = await unix.patch("/namespaces/lab", content=json.dumps({"labels": {LABEL: None}}),
                                   headers={"Content-Type": MERGE_PATCH})
        assert removed.status_code == 200 and removed.json()["labels"] == {"team": "b"}, removed.text
        again = container_body("web2", spec=spec(**hook("createRuntime")))
        assert_problem(await unix.post("/containers", json=again, headers=headers), 422, "spec.hooks.createRuntime")

    async def test_tcp_create_without_the_label(self, daemon: tuple[httpx.AsyncClient, httpx.AsyncClient]) -> None:
        _, tcp = daemon
        created = await tcp.post("/namespaces", json={"name": "plain", "labels": {"team": "a"}})
        assert created.status_code == 201, created.text

    @pytest.mark.parametrize("value", ["Privileged", "yes", ""])
    async def test_unknown_value(self, live_client: httpx.AsyncClient, value: str) -> None:
        async with unchanged(live_client, {}):
            response = await live_client.post("/namespaces", json={"name": "odd", "labels": {LABEL: value}})
        assert_problem(response, 422, f'labels."{LABEL}" must be one of privileged, restricted')

    async def test_explicit_restricted_lifts_nothing(
        self, live_client: httpx.AsyncClient, allowed: Path
    ) -> None:
        created = await live_client.post("/namespaces", json={"name": "strict", "labels": {LABEL: "restricted"}})
        assert created.status_code == 201, created.text
        body = body_with("web", hook("poststop"), allowed)
        response = await live_client.post("/containers", json=body, headers={"Cargohold-Namespace": "strict"})
        assert_problem(response, 422, "spec.hooks.poststop")


class TestLabelledNamespace:
    """Over a real unix socket: the label lifts each rule, and a patch that only touches
    labels of a container stays allowed once the namespace's label is gone."""

    @pytest.mark.parametrize(("fields", "field"), REFUSED)
    async def test_lifts_each_rule(
        self, live_client: httpx.AsyncClient, allowed: Path, fields: Json, field: str
    ) -> None:
        made = await live_client.post("/namespaces", json={"name": "priv", "labels": {LABEL: "privileged"}})
        assert made.status_code == 201, made.text
        headers = {"Cargohold-Namespace": "priv"}
        response = await live_client.post("/containers", json=body_with("web", fields, allowed), headers=headers)
        assert response.status_code == 201, response.text

    async def test_labels_only_patch_after_the_label_is_gone(
        self, live_client: httpx.AsyncClient, allowed: Path
    ) -> None:
        headers = {"Cargohold-Namespace": "priv"}
        await live_client.post("/namespaces", json={"name": "priv", "labels": {LABEL: "privileged"}})
        created = await live_client.post("/containers", json=body_with("web", hook("prestart"), allowed),
                                         headers=headers)
        assert created.status_code == 201, created.text
        removed = await live_client.patch("/namespaces/priv", content=json.dumps({"labels": None}),
                                          headers={"Content-Type": MERGE_PATCH})
        assert removed.status_code == 200, removed.text
        relabel = await live_client.patch("/containers/web", content=json.dumps({"labels": {"env": "x"}}),
                                          headers={**headers, "Content-Type": MERGE_PATCH})
        assert relabel.status_code == 200, relabel.text
        respec = await live_client.patch(
            "/containers/web", content=json.dumps({"spec": {"hostname": "h"}}),
            headers={**headers, "Content-Type": MERGE_PATCH},
        )
        assert_problem(respec, 422, "spec.hooks.prestart")


async def test_a_missing_seccomp_profile_file_stops_the_daemon(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    process = await asyncio.create_subprocess_exec(
        *CARGOHOLD, "serve", "--root", str(tmp_path / "root"), "--state", str(tmp_path / "state"),
        "--listen", f"unix://{tmp_path / 'state' / 'cargohold.sock'}", "--seccomp-profile", str(missing),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=MAIN,
    )
    async with asyncio.timeout(30):
        output, _ = await process.communicate()
    assert process.returncode != 0
    assert f"--seccomp-profile {missing}: no such file".encode() in output, output.decode()
