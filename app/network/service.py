"""NetworkService: bridge networks, and tasks attached to them through CNI.

A network is a CNI chain made from its row: `bridge` (the network's Linux bridge, the
gateway address on it, masquerade out, hairpin) with `host-local` IPAM (its allocations
under the daemon's state dir, not /var/lib/cni), then `portmap` when the task publishes
ports, then `firewall` (FORWARD accepts the task's traffic); `loopback` brings up `lo` as a
chain of its own. Attaching a task (`attach`): refuse an unknown network (404) or a host
port taken (409: published by another task, which the store's reservation decides, or
bound by a host process, which a trial bind decides), then make the netns, run ADD, and
write the task's /etc files. `release` undoes all of it and is idempotent; at start
`remove_unowned` releases what a crash left.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import ipaddress
import logging
import shutil
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import CargoholdError, ErrorKind
from ..identifiers import validate_identifier
from ..models import ContainerNetwork, Network, NetworkCreate, PortMapping, PortProtocol, TaskNetwork
from ..store.networks import Attachment, NetworkStore
from . import files, netns
from .cni import Chain, CNIError, Invocation, first_ip

log = logging.getLogger(__name__)

DEFAULT_NETWORK = "cargohold"
DEFAULT_BRIDGE = "cargohold0"
CONTAINER_IFNAME = "eth0"
# Prefix lengths a network may have: /30 leaves two addresses, the gateway and one task.
MIN_PREFIX, MAX_PREFIX = 8, 30


@dataclass(frozen=True)
class Attached:
    """A task's attachment, made: what its runtime spec needs."""

    netns: Path
    address: str
    hostname: str


def parse_subnet(subnet: str) -> ipaddress.IPv4Network:
    """Raises VALIDATION naming a subnet that is not an IPv4 network (host bits set
    included) or whose size is out of range."""
    try:
        network = ipaddress.IPv4Network(subnet, strict=True)
    except ValueError as error:
        raise CargoholdError(ErrorKind.VALIDATION, f"subnet {subnet[:60]!r} is not an IPv4 network: {error}") from None
    if not MIN_PREFIX <= network.prefixlen <= MAX_PREFIX:
        raise CargoholdError(
            ErrorKind.VALIDATION, f"subnet {subnet} must have a prefix from /{MIN_PREFIX} to /{MAX_PREFIX}"
        )
    return network


class NetworkService:
    def __init__(self, store: NetworkStore, state: Path, cni_path: Sequence[Path], default_subnet: str) -> None:
        self._store = store
        self._state = state / "networks"
        self._cni_path = list(cni_path)
        self._default_subnet = default_subnet
        # Salts the CNI container ids: portmap names its iptables chains after them, and two
        # daemons (another state dir) may each run a task "web" in namespace "default".
        self._salt = hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:8]
        # The host side of each attached task's veth (for its counters), by (namespace, task id).
        self._veths: dict[tuple[str, str], str] = {}

    @property
    def netns_dir(self) -> Path:
        return self._state / "netns"

    @property
    def ipam_dir(self) -> Path:
        return self._state / "ipam"

    # --- networks ---------------------------------------------------------------------

    async def ensure_default(self) -> Network:
        """The default network, made with `--default-subnet` on first start."""
        try:
            found = await self._store.get(DEFAULT_NETWORK)
        except CargoholdError as error:
            if error.kind is not ErrorKind.NOT_FOUND:
                raise
            return await self.create(NetworkCreate(name=DEFAULT_NETWORK, subnet=self._default_subnet,
                                                   bridge=DEFAULT_BRIDGE))
        if found.subnet != self._default_subnet:
            log.warning("network %s keeps its subnet %s; --default-subnet %s applies only when it is made",
                        DEFAULT_NETWORK, found.subnet, self._default_subnet)
        return found

    async def create(self, body: NetworkCreate) -> Network:
        """Raises VALIDATION (a bad subnet), ALREADY_EXISTS (the name), CONFLICT (the bridge
        name, or a subnet overlapping another network's)."""
        subnet = parse_subnet(body.subnet)
        bridge = body.bridge or "ch-" + hashlib.sha256(body.name.encode()).hexdigest()[:12]
        network = Network(
            name=body.name, bridge=bridge, subnet=str(subnet), gateway=str(subnet.network_address + 1),
            labels=body.labels, created_at=datetime.now(UTC),
        )
        return await self._store.create(network)

    async def get(self, name: str) -> Network:
        validate_identifier("network name", name)
        return await self._store.get(name)

    async def find(self) -> list[Network]:
        """Every network, by name (`find` lists, in every service)."""
        return await self._store.all()

    async def delete(self, name: str) -> None:
        """Raises NOT_FOUND, or CONFLICT while a container names it or a task is attached.
        Its bridge and IPAM dir go with it. The default network is never deleted (CONFLICT):
        it is made again at every start."""
        network = await self.get(name)
        if name == DEFAULT_NETWORK:
            raise CargoholdError(ErrorKind.CONFLICT, f'network "{name}" is the default network; it cannot be deleted')
        await self._store.delete(name)
        await asyncio.to_thread(_delete_link, network.bridge)
        await asyncio.to_thread(_remove_tree, self.ipam_dir / name)

    # --- tasks ------------------------------------------------------------------------

    async def check(self, spec: ContainerNetwork) -> None:
        """What a container create checks: the network exists (NOT_FOUND naming it)."""
        await self._store.get(spec.name)

    async def attach(
        self, namespace: str, task_id: str, spec: ContainerNetwork, hostname: str, etc_dir: Path
    ) -> Attached:
        """Join the task to its network; on failure nothing is left. Raises NOT_FOUND (no
        such network), CONFLICT (a host port taken), UNAVAILABLE (a CNI plugin failed,
        with its message)."""
        network = await self._store.get(spec.name)
        for port in spec.ports:
            await asyncio.to_thread(_refuse_bound, port)
        path = self.netns_dir / f"{namespace}+{task_id}"
        cni_id = f"{task_id[:40]}-{hashlib.sha256(f'{namespace}+{task_id}'.encode()).hexdigest()[:12]}-{self._salt}"
        attachment = Attachment(namespace, task_id, network.name, cni_id, str(path), list(spec.ports), None)
        # The container's previous task is torn down (create waits for that): an attachment
        # still recorded is one whose DEL failed then; it goes now, before the new one.
        await self.release(namespace, task_id, force=True)
        await self._store.attach(attachment)  # reserves the ports, or CONFLICT
        try:
            await netns.create(path)
            where = Invocation(cni_id, str(path), CONTAINER_IFNAME)
            result = await self._chain(network, attachment.ports).add(where)
            await self._loopback().add(Invocation(cni_id, str(path), "lo"))
            await self._store.set_result(namespace, task_id, result)
            address, _, _ = first_ip(result)
            self._note_veth(namespace, task_id, result)
            await asyncio.to_thread(_write_etc, etc_dir, hostname, address)
        except BaseException as error:
            await asyncio.shield(self.release(namespace, task_id, force=True))
            if isinstance(error, CNIError):
                raise CargoholdError(ErrorKind.UNAVAILABLE, f'network "{network.name}": {error.describe()}') from None
            if isinstance(error, netns.NetnsError | ValueError):
                raise CargoholdError(ErrorKind.UNAVAILABLE, f'network "{network.name}": {error}') from None
            raise
        return Attached(path, address, hostname)

    async def release(self, namespace: str, task_id: str, force: bool = False) -> None:
        """CNI DEL with the ADD's arguments and result, remove the netns, forget the
        attachment (idempotent; a task without one is left alone). A DEL that fails keeps
        the attachment, for the next start to try again, unless `force` (the undo of a
        failed ADD: the plugin that failed may fail its DEL as well)."""
        attachment = await self._store.attachment(namespace, task_id)
        if attachment is None:
            return
        network = await self._store.get(attachment.network)
        path = Path(attachment.netns)
        failures = await self._chain(network, attachment.ports).delete(
            Invocation(attachment.cni_id, attachment.netns, CONTAINER_IFNAME), attachment.result
        )
        failures += await self._loopback().delete(Invocation(attachment.cni_id, attachment.netns, "lo"), None)
        if failures:
            log.warning("CNI DEL of %s/%s failed: %s", namespace, task_id, "; ".join(f.describe() for f in failures))
            if not force:
                return  # the next start tries again
        self._veths.pop((namespace, task_id), None)
        await asyncio.to_thread(netns.remove, path)
        await self._store.detach(namespace, task_id)

    async def remove_unowned(self) -> None:
        """At start: release what no task owns (a crash in a create or a teardown), and
        note the veths of the tasks re-adopted."""
        for attachment in await self._store.unowned():
            log.info("releasing the network of %s/%s: no task owns it", attachment.namespace, attachment.task_id)
            await self.release(attachment.namespace, attachment.task_id)
        for attachment in await self._store.all_attachments():
            if attachment.result is not None:
                self._note_veth(attachment.namespace, attachment.task_id, attachment.result)

    def counters(self) -> dict[tuple[str, str], dict[str, tuple[int, int]]]:
        """Bytes received and transmitted by each attached task, by its interface (eth0)."""
        found = {key: _veth_counters(veth) for key, veth in list(self._veths.items())}
        return {key: {CONTAINER_IFNAME: pair} for key, pair in found.items() if pair is not None}

    def task_counters(self, namespace: str, task_id: str) -> tuple[dict[str, int], dict[str, int]]:
        """The task's bytes received and transmitted, by interface (empty: not attached)."""
        veth = self._veths.get((namespace, task_id))
        pair = _veth_counters(veth) if veth is not None else None
        if pair is None:
            return {}, {}
        return {CONTAINER_IFNAME: pair[0]}, {CONTAINER_IFNAME: pair[1]}

    def _note_veth(self, namespace: str, task_id: str, result: dict[str, Any]) -> None:
        """The bridge plugin lists the bridge, the host-side veth, then the container's
        interface (with a sandbox): the host veth is the one before the sandboxed one."""
        interfaces = result.get("interfaces") or []
        for index, interface in enumerate(interfaces):
            if interface.get("sandbox") and index > 0 and not interfaces[index - 1].get("sandbox"):
                self._veths[(namespace, task_id)] = str(interfaces[index - 1].get("name"))
                return

    async def task_network(self, namespace: str, task_id: str) -> TaskNetwork | None:
        attachment = await self._store.attachment(namespace, task_id)
        if attachment is None or attachment.result is None:
            return None
        try:
            address, gateway, mac = first_ip(attachment.result)
        except (ValueError, KeyError):
            return None
        return TaskNetwork(network=attachment.network, ip=address, gateway=gateway, mac=mac, ports=attachment.ports)

    def _chain(self, network: Network, ports: Sequence[PortMapping]) -> Chain:
        plugins: list[dict[str, Any]] = [{
            "type": "bridge",
            "bridge": network.bridge,
            "isGateway": True,
            "ipMasq": True,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": network.subnet, "gateway": network.gateway}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": str(self.ipam_dir),
            },
        }]
        if ports:
            plugins.append({
                "type": "portmap",
                "capabilities": {"portMappings": True},
                "runtimeConfig": {"portMappings": [
                    {
                        "hostPort": port.host_port, "containerPort": port.container_port,
                        "protocol": port.protocol.value, **({"hostIP": str(port.host_ip)} if port.host_ip else {}),
                    }
                    for port in ports
                ]},
            })
        # The firewall plugin lets the task's traffic through FORWARD (its own CNI-FORWARD
        # chain), so a host whose FORWARD policy is DROP (one with Docker, say) still routes
        # it. Last, as Podman orders it: its DEL needs the ADD's result to find its rules,
        # so nothing may fail after it (a failed ADD is undone without a result).
        plugins.append({"type": "firewall", "backend": "iptables"})
        return Chain(network.name, plugins, self._cni_path)

    def _loopback(self) -> Chain:
        return Chain("cargohold-loopback", [{"type": "loopback"}], self._cni_path)


def _refuse_bound(port: PortMapping) -> None:
    """CONFLICT when a host process has the port bound (a trial bind fails)."""
    kind = socket.SOCK_STREAM if port.protocol is PortProtocol.TCP else socket.SOCK_DGRAM
    host = str(port.host_ip) if port.host_ip else "0.0.0.0"
    with socket.socket(socket.AF_INET, kind) as probe:
        # TCP: a port in TIME_WAIT is free to publish; a listener still refuses the bind.
        if kind == socket.SOCK_STREAM:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port.host_port))
        except OSError as error:
            if error.errno == errno.EADDRNOTAVAIL:
                raise CargoholdError(ErrorKind.VALIDATION, f"host_ip {host} is not an address of this host") from None
            raise CargoholdError(
                ErrorKind.CONFLICT,
                f"host port {host}:{port.host_port}/{port.protocol.value} is in use on the host: {error.strerror}",
            ) from None


def _veth_counters(veth: str) -> tuple[int, int] | None:
    """(received, transmitted) by the task behind host veth `veth`: read on the host side
    (sysfs, two small reads), where what the host transmits is what the task receives."""
    statistics = Path("/sys/class/net") / veth / "statistics"
    try:
        return int((statistics / "tx_bytes").read_text()), int((statistics / "rx_bytes").read_text())
    except (OSError, ValueError):
        return None  # going away


def _write_etc(etc_dir: Path, hostname: str, address: str) -> None:
    etc_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    (etc_dir / "hosts").write_text(files.hosts(hostname, address))
    (etc_dir / "hostname").write_text(hostname + "\n")
    (etc_dir / "resolv.conf").write_text(files.resolv_conf())
    for name in ("hosts", "hostname", "resolv.conf"):
        (etc_dir / name).chmod(0o644)


def _delete_link(name: str) -> None:
    subprocess.run(["ip", "link", "delete", name], capture_output=True, check=False)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
