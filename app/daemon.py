"""The object graph: one place that builds every part from `Settings` and tears it down.

`open_daemon(settings)` opens the database, wires the event bus to commits, builds the
stores and services, probes the host, and yields a `Daemon`; on exit it closes them in
reverse order. Constructors take their dependencies; nothing here is a global.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

from . import __version__
from .attach.hub import Attachments
from .attach.service import AttachService
from .config import Settings
from .containers import ContainerService
from .content import ContentStore
from .content.service import ContentService
from .errors import CargoholdError
from .events import EventBus, EventService
from .gc import Leases
from .gc.collector import Collector
from .images.registry import RegistryClient
from .images.service import ImageService
from .models import Event, VersionInfo
from .monitor.cgroup_stats import detect_mode
from .monitor.monitor import Monitor
from .namespaces import NamespaceService
from .network.service import NetworkService
from .network.step import NetworkStep
from .ondisk import StartupError, secure_layout
from .policy import SpecPolicy, load_seccomp
from .runtime.conmon import Conmon
from .runtime.logs import TaskLogs
from .runtime.oci import OCIRuntime
from .runtime.tasks import TaskService
from .snapshots.native import NativeSnapshotter
from .snapshots.overlay import OverlaySnapshotter, overlay_supported
from .snapshots.service import ImportLimits, SnapshotService, Snapshotter
from .store.containers import ContainerStore
from .store.db import Database
from .store.events import EventStore
from .store.gc import GcStore
from .store.images import ImageStore
from .store.namespaces import NamespaceStore
from .store.networks import NetworkStore
from .store.snapshots import SnapshotStore
from .store.tasks import TaskStore

log = logging.getLogger(__name__)

RUNTIME_BINARIES = ("runc", "crun", "conmon")


@dataclass
class Daemon:
    settings: Settings
    bus: EventBus
    namespaces: NamespaceService
    containers: ContainerService
    snapshots: SnapshotService
    images: ImageService
    content: ContentService
    collector: Collector
    tasks: TaskService
    monitor: Monitor
    events: EventService
    version: VersionInfo
    networks: NetworkService
    attach: AttachService


@asynccontextmanager
async def open_daemon(
    settings: Settings,
    on_event: Callable[[Event], None] | None = None,
    observe_poll: Callable[[float], None] = lambda seconds: None,
) -> AsyncIterator[Daemon]:
    """Build the daemon; `on_event` sees every published event, `observe_poll` every
    monitor poll's duration (the daemon's own metrics)."""
    async with AsyncExitStack() as stack:
        secure_layout(settings)  # DESIGN "On disk": modes fixed, or StartupError
        db = await Database.open(
            settings.database_path, settings.event_retention, settings.event_retention_bytes,
            settings.event_max_payload_bytes,
        )
        stack.push_async_callback(db.close)
        bus = EventBus(settings.subscriber_queue_size, on_publish=on_event)
        db.on_commit = bus.publish
        snapshotters = available_snapshotters()
        default_snapshotter = settings.snapshotter or ("overlayfs" if "overlayfs" in snapshotters else "native")
        snapshots = SnapshotService(
            SnapshotStore(db), settings.root, snapshotters, default_snapshotter, ImportLimits.from_settings(settings)
        )
        stack.callback(snapshots.close)
        snapshots.snapshotter(default_snapshotter)  # refuse an unknown --snapshotter at start
        container_store = ContainerStore(db, default_snapshotter)
        registry = RegistryClient(ca_dir=settings.registry_ca_dir, insecure_registries=settings.insecure_registries)
        stack.push_async_callback(registry.aclose)
        leases = Leases()
        content = ContentStore(settings.root / "content")
        collector = Collector(GcStore(db), content, snapshots, leases)
        stack.push_async_callback(collector.close)
        snapshots.after_release = collector.schedule
        images = ImageService(ImageStore(db), content, registry, snapshots, leases, released=collector.schedule)
        runtimes, conmon, missing = find_runtimes(settings)
        mode = detect_mode()
        monitor = Monitor(mode, settings.monitor_interval, observe_poll)
        monitor.start()
        stack.push_async_callback(monitor.close)
        seccomp, seccomp_missing = load_seccomp(settings.seccomp_profile)  # a named file must load
        if seccomp_missing:
            log.warning("%s", seccomp_missing)
        policy = SpecPolicy(
            NamespaceStore(db), settings.allow_privileged, settings.allowed_bind_roots, seccomp, seccomp_missing
        )
        logs = TaskLogs(settings.root / "logs")  # written by tasks, forgotten with containers
        networks = NetworkService(NetworkStore(db), settings.state, settings.cni_path, settings.default_subnet)
        try:
            await networks.ensure_default()
        except CargoholdError as error:
            raise StartupError(f"the default network: {error.detail} (see --default-subnet)") from error
        tasks = TaskService(
            TaskStore(db, settings.exit_retention, timedelta(seconds=settings.exit_max_age_seconds)),
            container_store,
            snapshots,
            state=settings.state,
            logs=logs,
            runtimes=runtimes,
            conmon=conmon,
            missing=missing,
            policy=policy,
            monitor=monitor,
            extra_steps=[NetworkStep(networks)],
            teardown=[networks.release],
        )
        # Tasks first: their rootfs mounts live under the snapshots' data dirs.
        await tasks.recover()
        stack.push_async_callback(tasks.close)
        attachments = Attachments(settings.attach_client_buffer_bytes, settings.attach_stall_seconds)
        stack.push_async_callback(attachments.close)  # before tasks.close: the processes keep running
        await networks.remove_unowned()  # after recovery: what a crash left with no task
        await snapshots.remove_orphans()
        await collector.collect()  # what a crash interrupted (a pull, an unpack) is reclaimed now
        yield Daemon(
            settings=settings,
            bus=bus,
            namespaces=NamespaceService(NamespaceStore(db)),
            containers=ContainerService(container_store, snapshots, logs, policy, images),
            snapshots=snapshots,
            images=images,
            content=ContentService(content),
            collector=collector,
            tasks=tasks,
            monitor=monitor,
            events=EventService(EventStore(db), bus),
            version=VersionInfo(
                version=__version__,
                runtimes=await probe_runtimes(settings.runtime_path),
                cgroup_mode=mode.value,
                snapshotter=default_snapshotter,
            ),
            networks=networks,
            attach=AttachService(tasks, attachments),
        )


def find_runtimes(settings: Settings) -> tuple[dict[str, OCIRuntime], Conmon | None, dict[str, str]]:
    """The OCI runtimes and conmon installed here; for each missing one, what to say."""
    runtimes: dict[str, OCIRuntime] = {}
    missing: dict[str, str] = {}
    for name in ("runc", "crun"):
        binary = shutil.which(name, path=settings.runtime_path)
        if binary is None:
            missing[name] = f"{name} is not installed on this host (apt-get install {name}); task endpoints need it"
        else:
            runtimes[name] = OCIRuntime(name, binary, settings.state / "runtimes" / name)
    conmon_binary = shutil.which("conmon", path=settings.runtime_path)
    if conmon_binary is None:
        missing["conmon"] = "conmon is not installed on this host (apt-get install conmon); task endpoints need it"
    conmon = Conmon(conmon_binary, settings.log_max_bytes) if conmon_binary else None
    return runtimes, conmon, missing


def available_snapshotters() -> dict[str, Snapshotter]:
    found: dict[str, Snapshotter] = {"native": NativeSnapshotter()}
    if overlay_supported():
        found["overlayfs"] = OverlaySnapshotter()
    return found


async def probe_runtimes(search_path: str | None = None) -> dict[str, str | None]:
    """Each runtime binary's version line, or None when it is not installed."""

    async def version_of(binary: str) -> str | None:
        path = shutil.which(binary, path=search_path)
        if path is None:
            return None
        process = await asyncio.create_subprocess_exec(
            path, "--version",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await process.communicate()
        first = out.decode(errors="replace").strip().splitlines()
        return first[0] if first else "unknown"

    versions = await asyncio.gather(*(version_of(binary) for binary in RUNTIME_BINARIES))
    return dict(zip(RUNTIME_BINARIES, versions, strict=True))
