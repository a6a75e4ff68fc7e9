"""Pydantic resources and inputs: what the API reads and returns.

Resources (`Container`, `Namespace`, `Event`) are what the store hands back; inputs
(`ContainerCreate`, `NamespaceCreate`) are validated at the edge so that a bad field is
a 422 naming it. This module holds shapes and field rules only, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from ipaddress import IPv4Address
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from .identifiers import IDENTIFIER_PATTERN, MAX_IDENTIFIER_LENGTH, identifier_problem, labels_problem


def _check_identifier(value: str) -> str:
    problem = identifier_problem(value)
    if problem is not None:
        raise ValueError(f"not a valid identifier: it {problem}")
    return value


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    problem = labels_problem(labels)
    if problem is not None:
        raise ValueError(problem)
    return labels


Identifier = Annotated[
    str,
    Field(max_length=MAX_IDENTIFIER_LENGTH, json_schema_extra={"pattern": IDENTIFIER_PATTERN}),
    AfterValidator(_check_identifier),
]
Labels = Annotated[dict[str, str], AfterValidator(_check_labels)]


class _Input(BaseModel):
    # Unknown fields are a mistake the caller wants to hear about, not silently drop.
    model_config = ConfigDict(extra="forbid")


class _OCIPart(BaseModel):
    # The OCI spec is larger than what we check; unknown fields pass through untouched.
    model_config = ConfigDict(extra="allow")


# --- OCI runtime spec (config.json): the parts Cargohold checks -----------------


class OCIUser(_OCIPart):
    uid: int = Field(ge=0)
    gid: int = Field(ge=0)
    additionalGids: list[Annotated[int, Field(ge=0)]] | None = None  # noqa: N815 (OCI name)


class OCIProcess(_OCIPart):
    args: list[str] = Field(min_length=1)
    env: list[str] | None = None
    cwd: str | None = None
    terminal: bool | None = None
    user: OCIUser | None = None


class OCIRoot(_OCIPart):
    path: str = Field(min_length=1)
    readonly: bool | None = None


class OCIMount(_OCIPart):
    destination: str = Field(min_length=1)
    type: str | None = None
    source: str | None = None
    options: list[str] | None = None


class OCISpec(_OCIPart):
    """An OCI runtime spec; the fields listed are type-checked, the rest kept as given."""

    ociVersion: str = Field(pattern=r"^1\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$")  # noqa: N815
    process: OCIProcess | None = None
    root: OCIRoot
    hostname: str | None = None
    mounts: list[OCIMount] | None = None
    annotations: dict[str, str] | None = None
    linux: dict[str, Any] | None = None


# --- Containers ------------------------------------------------------------------


class RuntimeName(StrEnum):
    RUNC = "runc"
    CRUN = "crun"


class Runtime(_Input):
    name: RuntimeName = RuntimeName.RUNC
    options: dict[str, Any] = Field(default_factory=dict)


class PortProtocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"


class PortMapping(_Input):
    """A published port: `host_ip:host_port` on the host forwards to `container_port`."""

    host_port: int = Field(ge=1, le=65535)
    container_port: int = Field(ge=1, le=65535)
    protocol: PortProtocol = PortProtocol.TCP
    host_ip: IPv4Address | None = Field(default=None, description="default: every host address")


class ContainerNetwork(_Input):
    """The network a container's tasks join (DESIGN "Networks"); null: today's behaviour."""

    name: Identifier
    ports: list[PortMapping] = Field(default_factory=list, max_length=1024)
    hostname: str | None = Field(
        default=None, max_length=63, pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$",
        description="default: the spec's hostname, else the container's id",
    )

    @field_validator("ports")
    @classmethod
    def _one_mapping_per_host_port(cls, ports: list[PortMapping]) -> list[PortMapping]:
        seen: set[tuple[int, str]] = set()
        for port in ports:
            key = (port.host_port, port.protocol.value)
            if key in seen:
                raise ValueError(f"host_port {port.host_port}/{port.protocol.value} is given twice")
            seen.add(key)
        return ports


class _ContainerMembers(_Input):
    labels: Labels = Field(default_factory=dict)
    image: str = ""
    runtime: Runtime = Field(default_factory=Runtime)
    snapshotter: str | None = Field(default=None, description="default: the daemon's snapshotter")
    snapshot_key: str = Field(default="", description="the root filesystem snapshot; empty: none")
    extensions: dict[str, Any] = Field(default_factory=dict)
    network: ContainerNetwork | None = Field(default=None, description="the network its tasks join; null: none")


class ContainerFields(_ContainerMembers):
    """The mutable part of a container: what a create sets and a merge-patch may change."""

    spec: OCISpec


class ProcessOverride(_Input):
    """What `POST /containers` changes of the process the spec (or the image) gives."""

    args: list[str] | None = Field(default=None, min_length=1, description="the whole argv (as `ctr run`)")
    env: list[str] | None = Field(default=None, description="NAME=value entries, replacing those of the same NAME")
    cwd: str | None = None
    user: OCIUser | None = None
    terminal: bool | None = None


class ContainerCreate(_ContainerMembers):
    id: Identifier
    spec: OCISpec | None = Field(
        default=None,
        validate_default=True,
        description="required unless `image` names a pulled image: then, with no spec, it is built from the "
        "image config (entrypoint + cmd, env, working dir, user) over the daemon's defaults",
    )
    process: ProcessOverride | None = Field(default=None, description="overrides of the spec's process")

    @field_validator("spec")
    @classmethod
    def _spec_or_image(cls, spec: OCISpec | None, info: ValidationInfo) -> OCISpec | None:
        if spec is None and not info.data.get("image"):
            raise ValueError("Field required (unless image names a pulled image to build the spec from)")
        return spec


class Container(BaseModel):
    id: str
    labels: dict[str, str]
    image: str
    runtime: Runtime
    spec: dict[str, Any] = Field(description="an OCI runtime spec (config.json)")
    snapshotter: str
    snapshot_key: str
    extensions: dict[str, Any]
    # Absent when null: the documents (and ETags) of containers without one are as before networks.
    network: ContainerNetwork | None = Field(default=None, exclude_if=lambda value: value is None)
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ContainerHead:
    """What container filters look at: a container without its spec and extensions, so
    a filtered list parses only the rows that match."""

    id: str
    image: str
    runtime: str
    snapshotter: str
    snapshot_key: str
    labels: dict[str, str]


# --- Lists: a page at a time ----------------------------------------------------------

T = TypeVar("T")

# Page sizes of every list (`?limit=`): the API's contract, documented in the OpenAPI.
DEFAULT_PAGE_LIMIT = 1000
MAX_PAGE_LIMIT = 10_000
_NEXT_CURSOR = Field(
    default=None,
    description="pass as `after` to read the next page; null: this page is the last. A page may "
    "hold fewer than `limit` objects (their bytes are bounded too): follow the cursor, not the count.",
)


@dataclass(frozen=True)
class PageRequest:
    """Which page of a list: objects whose key sorts after `after` ("" from the first),
    at most `limit` of them and about `max_bytes` of their JSON."""

    limit: int = DEFAULT_PAGE_LIMIT
    after: str = ""
    max_bytes: int = 16 * 1024 * 1024


# The first page, of the default size: the default of every `list` method below the API.
FIRST_PAGE = PageRequest()


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list and the cursor to the next (None: the last page)."""

    items: list[T]
    next_cursor: str | None


class ContainerList(BaseModel):
    containers: list[Container]
    next_cursor: str | None = _NEXT_CURSOR


# --- Namespaces ------------------------------------------------------------------


class NamespaceCreate(_Input):
    name: Identifier
    labels: Labels = Field(default_factory=dict)


class NamespacePatch(_Input):
    """A JSON merge patch of a namespace: only its labels change (`null` deletes one)."""

    name: str | None = Field(default=None, description="may be given, but must be the current name")
    labels: dict[str, str | None] | None = None


class NamespaceLabels(BaseModel):
    labels: Labels


class Namespace(BaseModel):
    name: str
    labels: dict[str, str]
    created_at: datetime
    updated_at: datetime


class NamespaceList(BaseModel):
    namespaces: list[Namespace]
    next_cursor: str | None = _NEXT_CURSOR


# --- Snapshots -------------------------------------------------------------------


class SnapshotKind(StrEnum):
    ACTIVE = "active"
    VIEW = "view"
    COMMITTED = "committed"


class SnapshotCreate(_Input):
    """Prepare (`active`, writable) or view (`view`, read-only) a snapshot on `parent`."""

    key: Identifier
    parent: str | None = Field(default=None, description="a committed snapshot; none: empty")
    kind: Literal[SnapshotKind.ACTIVE, SnapshotKind.VIEW] = SnapshotKind.ACTIVE
    labels: Labels = Field(default_factory=dict)


class SnapshotCommit(_Input):
    name: Identifier
    labels: Labels = Field(default_factory=dict)


class Snapshot(BaseModel):
    key: str
    kind: SnapshotKind
    parent: str | None
    labels: dict[str, str]
    snapshotter: str
    created_at: datetime
    updated_at: datetime


class SnapshotList(BaseModel):
    snapshots: list[Snapshot]
    next_cursor: str | None = _NEXT_CURSOR


# --- Images ----------------------------------------------------------------------


class Descriptor(BaseModel):
    """An OCI content descriptor: what an image name points at."""

    media_type: str
    digest: str
    size: int


class Image(BaseModel):
    name: str = Field(description="a normalized reference, e.g. docker.io/library/busybox:latest")
    target: Descriptor = Field(description="the index or manifest the name points at")
    labels: dict[str, str]
    size: int = Field(description="bytes of the blobs pulled: the index (if any), and the manifest, config and "
                      "layers of the platform pulled")
    platforms: list[str] = Field(description="the platforms the target offers (os/architecture[/variant])")
    config_digest: str | None = Field(description="the image config of the platform pulled")
    created_at: datetime
    updated_at: datetime


class ImageList(BaseModel):
    images: list[Image]
    next_cursor: str | None = _NEXT_CURSOR


class ContentInfo(BaseModel):
    """A blob of the content store (global to the daemon, not per namespace)."""

    digest: str
    size: int
    created_at: datetime = Field(description="when the blob was committed to the store")


class ContentList(BaseModel):
    blobs: list[ContentInfo]
    next_cursor: str | None = _NEXT_CURSOR


class RegistryCredentials(_Input):
    """Basic credentials, or a bearer token; never stored, logged or echoed."""

    username: str | None = None
    # repr=False: a model printed in a log line or a traceback does not show them.
    password: str | None = Field(default=None, repr=False, json_schema_extra={"writeOnly": True})
    token: str | None = Field(default=None, repr=False, json_schema_extra={"writeOnly": True})


class ImagePull(_Input):
    reference: str = Field(description="e.g. busybox, 127.0.0.1:5000/library/busybox:latest, name@sha256:...")
    platform: str | None = Field(default=None, description="os/architecture[/variant]; default: the host's")
    unpack: bool = Field(default=True, description="unpack the layers as committed snapshots")
    snapshotter: str | None = Field(default=None, description="default: the daemon's snapshotter")
    plain_http: bool = Field(default=False, description="speak plain HTTP to the registry (no TLS)")
    credentials: RegistryCredentials | None = None


class ImagePush(_Input):
    reference: str = Field(description="where to push, e.g. 127.0.0.1:5000/team/busybox:v1 (no tag: latest); "
                           "name@sha256:... pushes by digest and must name the digest pushed")
    plain_http: bool = Field(default=False, description="speak plain HTTP to the registry (no TLS)")
    credentials: RegistryCredentials | None = None


class ImagePushResult(BaseModel):
    reference: str = Field(description="the normalized reference pushed to")
    digest: str = Field(description="the manifest or index the reference now names in the registry")
    media_type: str
    size: int
    pushed: list[str] = Field(description="blobs uploaded (config and layers; the manifests are PUT on every "
                              "push, as setting the tag needs)")
    mounted: list[str] = Field(description="blobs the registry mounted from the image's own repository "
                               "on the same registry (cross-repository mount): no bytes sent")
    existing: list[str] = Field(description="blobs the registry had already: not uploaded again")


class ImagePatch(_Input):
    """A JSON merge patch of an image: only its labels change (`null` deletes one)."""

    name: str | None = Field(default=None, description="may be given, but must be the current name")
    labels: dict[str, str | None] | None = None


class Mount(BaseModel):
    """What a runtime mounts to assemble the snapshot (as containerd's mount.Mount)."""

    type: str
    source: str
    options: list[str]


class Usage(BaseModel):
    size: int = Field(description="bytes on disk used by this snapshot's own layer")
    inodes: int


# --- Tasks -------------------------------------------------------------------------


class TaskStatus(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"


class TaskCreate(_Input):
    container_id: Identifier
    stdin: bool = Field(default=False, description="keep the process's stdin open for attach (conmon -i)")
    terminal: bool = Field(
        default=False,
        description="run the process on a pseudo-terminal (conmon -t); also set by the spec's process.terminal",
    )


class Process(BaseModel):
    exec_id: str
    pid: int | None = Field(description="null until the exec process is started")
    status: str = Field(description="created or running")
    created_at: datetime


class TaskNetwork(BaseModel):
    """What the network's CNI chain gave the task."""

    network: str
    ip: str
    gateway: str | None
    mac: str | None
    ports: list[PortMapping]


class Task(BaseModel):
    id: str = Field(description="the container's id")
    namespace: str
    pid: int
    status: TaskStatus
    runtime: str
    created_at: datetime
    started_at: datetime | None
    processes: list[Process]
    network: TaskNetwork | None = Field(default=None, description="set when the container joins a network")


class TaskList(BaseModel):
    tasks: list[Task]
    next_cursor: str | None = _NEXT_CURSOR


class Exit(BaseModel):
    id: str = Field(description="the container's id")
    exec_id: str | None = Field(default=None, description="set for an exec process")
    pid: int
    exit_status: int = Field(description="the exit code, or 128 + the signal that killed it")
    exited_at: datetime
    oom_killed: bool = False


Signal = Annotated[
    int | str, Field(description='a name ("SIGTERM", "TERM") or a number (15)', examples=["SIGTERM", 9])
]


class KillRequest(_Input):
    signal: Signal = "SIGTERM"
    all: bool = Field(default=False, description="signal every process of the task, not only init")


class ResizeRequest(_Input):
    """A terminal's new size, in character cells (conmon takes at most 1000 either way)."""

    width: int = Field(ge=1, le=1000)
    height: int = Field(ge=1, le=1000)


class ExecCreate(_Input):
    exec_id: Identifier
    process: OCIProcess = Field(description="process.terminal runs it on a pseudo-terminal")
    stdin: bool = Field(default=False, description="keep the process's stdin open for attach (conmon -i)")


class LinuxMemory(_OCIPart):
    limit: int | None = Field(default=None, ge=4 * 1024 * 1024, description="bytes; at least 4 MiB")
    reservation: int | None = Field(default=None, ge=0)
    swap: int | None = Field(default=None, ge=-1)


class LinuxCPU(_OCIPart):
    shares: int | None = Field(default=None, ge=2, le=262144)
    quota: int | None = Field(default=None, ge=-1)
    period: int | None = Field(default=None, ge=1000, le=1_000_000)
    cpus: str | None = None
    mems: str | None = None


class LinuxPids(_OCIPart):
    limit: int = Field(ge=-1, description="-1 or 0: unlimited")

    @field_validator("limit")
    @classmethod
    def _zero_is_unlimited(cls, limit: int) -> int:
        # runc reads 0 as "leave it as it is"; the OCI spec and Docker mean "no limit".
        return -1 if limit == 0 else limit


class LinuxResources(_Input):
    memory: LinuxMemory | None = None
    cpu: LinuxCPU | None = None
    pids: LinuxPids | None = None


class TaskPatch(_Input):
    resources: LinuxResources


class PidList(BaseModel):
    pids: list[int]


class TaskMetrics(BaseModel):
    """The monitor's latest reading of a task's cgroup; null: not available on this host."""

    container_id: str
    namespace: str
    read_at: datetime
    memory_usage_bytes: int | None
    memory_limit_bytes: int | None = Field(description="null: unlimited")
    memory_max_usage_bytes: int | None
    memory_rss_bytes: int | None
    memory_cache_bytes: int | None
    memory_failcnt: int | None
    oom_kill_count: int | None
    cpu_usage_seconds: float | None
    cpu_throttled_seconds: float | None
    cpu_throttled_periods: int | None
    pids_current: int | None
    pids_limit: int | None = Field(description="null: unlimited")
    blkio_bytes: dict[str, int] = Field(description='bytes by op: "read", "write"')
    network_receive_bytes: dict[str, int] = Field(
        default_factory=dict, description="bytes received, by interface (a task on a network: eth0)"
    )
    network_transmit_bytes: dict[str, int] = Field(
        default_factory=dict, description="bytes transmitted, by interface (a task on a network: eth0)"
    )


class LogLine(BaseModel):
    time: datetime
    stream: str = Field(description="stdout or stderr")
    line: str
    partial: bool = Field(
        default=False,
        description="the line goes on in the next line of the same stream (CRI's `P` tag): it was "
        "longer than the daemon's --log-line-max-size, or had not ended when the log did",
    )


# --- Events ------------------------------------------------------------------------


class Event(BaseModel):
    id: int = Field(description="strictly increasing across the daemon's life")
    timestamp: datetime
    namespace: str
    topic: str
    event: dict[str, Any]


class EventPage(BaseModel):
    events: list[Event]
    last_id: int = Field(description="pass as `since` to read the next page")


# --- Garbage collection ----------------------------------------------------------


class SnapshotRef(BaseModel):
    namespace: str
    snapshotter: str
    key: str


class GcResult(BaseModel):
    """What one garbage collection removed."""

    content: list[str] = Field(description="digests of the blobs removed")
    snapshots: list[SnapshotRef] = Field(description="the chain snapshots removed")
    ingests: int = Field(description="abandoned ingests (partial downloads) removed")
    duration_ms: float


# --- Daemon ------------------------------------------------------------------------


class Health(BaseModel):
    status: str = "ok"


class VersionInfo(BaseModel):
    version: str
    runtimes: dict[str, str | None] = Field(description="binary -> version, null when missing")
    cgroup_mode: str = Field(description="legacy (v1), hybrid or unified (v2)")
    snapshotter: str


class Problem(BaseModel):
    """An RFC 9457 problem detail, served as application/problem+json."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="for validation problems: each field at fault"
    )


# --- Networks ----------------------------------------------------------------------


class NetworkCreate(_Input):
    name: Identifier
    subnet: str = Field(description="an IPv4 network in CIDR form, e.g. 10.213.7.0/24 (/8 to /30)")
    bridge: str | None = Field(default=None, min_length=1, max_length=15, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                               description="the Linux bridge's name; default: ch- and a hash of the name")
    labels: Labels = Field(default_factory=dict)


class Network(BaseModel):
    name: str
    driver: Literal["bridge"] = "bridge"
    bridge: str
    subnet: str
    gateway: str
    labels: dict[str, str]
    created_at: datetime


class NetworkList(BaseModel):
    networks: list[Network]
