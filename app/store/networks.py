"""Network rows, and each task's attachment to one with the host ports it publishes.

Networks are global (a bridge and its subnet belong to the host, not to a namespace). An
attachment row is written before the task's CNI ADD, reserving its host ports in the same
transaction, so two creates can never publish one port; the ADD's result is recorded on
it afterwards, and the teardown's DEL reads it back (with the same CNI container id and
netns path) before the row goes.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import CargoholdError, ErrorKind, not_found
from ..models import Network, PortMapping
from .db import Database, Row, dumps, utcnow


def network_not_found(name: str) -> CargoholdError:
    return not_found(f'network "{name}" not found')


@dataclass(frozen=True)
class Attachment:
    namespace: str
    task_id: str
    network: str
    cni_id: str
    netns: str
    ports: list[PortMapping]
    # The CNI chain's ADD result; None while the ADD has not finished (or never did).
    result: dict[str, Any] | None


def _network(row: Row) -> Network:
    return Network(
        name=row["name"], bridge=row["bridge"], subnet=row["subnet"], gateway=row["gateway"],
        labels=json.loads(row["labels"]), created_at=datetime.fromisoformat(row["created_at"]),
    )


def _attachment(row: Row) -> Attachment:
    return Attachment(
        namespace=row["namespace"], task_id=row["task_id"], network=row["network"], cni_id=row["cni_id"],
        netns=row["netns"], ports=[PortMapping.model_validate(p) for p in json.loads(row["ports"])],
        result=json.loads(row["result"]) if row["result"] else None,
    )


class NetworkStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, network: Network) -> Network:
        """Raises ALREADY_EXISTS for a taken name, CONFLICT for a taken bridge or a subnet
        overlapping another network's."""
        async with self._db.write() as tx:
            if tx.exists("SELECT 1 FROM networks WHERE name = ?", network.name):
                raise CargoholdError(ErrorKind.ALREADY_EXISTS, f'network "{network.name}" already exists')
            other = tx.one("SELECT name FROM networks WHERE bridge = ?", network.bridge)
            if other is not None:
                raise CargoholdError(ErrorKind.CONFLICT, f'bridge "{network.bridge}" is network "{other["name"]}"\'s')
            subnet = ipaddress.IPv4Network(network.subnet)
            for row in tx.all("SELECT name, subnet FROM networks"):
                if subnet.overlaps(ipaddress.IPv4Network(row["subnet"])):
                    raise CargoholdError(
                        ErrorKind.CONFLICT,
                        f'subnet {network.subnet} overlaps network "{row["name"]}"\'s {row["subnet"]}',
                    )
            tx.execute(
                "INSERT INTO networks (name, bridge, subnet, gateway, labels, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                network.name, network.bridge, network.subnet, network.gateway, dumps(network.labels),
                network.created_at.isoformat(),
            )
            return network

    async def get(self, name: str) -> Network:
        row = await self._db.one("SELECT * FROM networks WHERE name = ?", name)
        if row is None:
            raise network_not_found(name)
        return _network(row)

    async def all(self) -> list[Network]:
        return [_network(row) for row in await self._db.all("SELECT * FROM networks ORDER BY name")]

    async def delete(self, name: str) -> None:
        """Raises NOT_FOUND, or CONFLICT while a container of any namespace names the
        network or a task is attached to it."""
        async with self._db.write() as tx:
            if not tx.exists("SELECT 1 FROM networks WHERE name = ?", name):
                raise network_not_found(name)
            user = tx.one(
                "SELECT namespace, id FROM container_documents WHERE json_extract(doc, '$.network.name') = ? LIMIT 1",
                name,
            )
            if user is None:
                user = tx.one(
                    "SELECT namespace, task_id AS id FROM network_attachments WHERE network = ? LIMIT 1", name
                )
            if user is not None:
                raise CargoholdError(
                    ErrorKind.CONFLICT,
                    f'network "{name}" is in use by container "{user["id"]}" in namespace "{user["namespace"]}"',
                )
            tx.execute("DELETE FROM networks WHERE name = ?", name)

    async def attach(self, attachment: Attachment) -> None:
        """Record the attachment and reserve its host ports. Raises CONFLICT naming a port
        another task publishes (an address of "all" clashes with every other address)."""
        async with self._db.write() as tx:
            for port in attachment.ports:
                host_ip = str(port.host_ip) if port.host_ip else ""
                taken = tx.one(
                    "SELECT namespace, task_id FROM published_ports WHERE host_port = ? AND protocol = ?"
                    " AND (host_ip = ? OR host_ip = '' OR ? = '')",
                    port.host_port, port.protocol.value, host_ip, host_ip,
                )
                if taken is not None:
                    raise CargoholdError(
                        ErrorKind.CONFLICT,
                        f"host port {host_ip or '*'}:{port.host_port}/{port.protocol.value} is published by the task "
                        f'of container "{taken["task_id"]}" in namespace "{taken["namespace"]}"',
                    )
            tx.execute(
                "INSERT INTO network_attachments"
                " (namespace, task_id, network, cni_id, netns, ports, result, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
                attachment.namespace, attachment.task_id, attachment.network, attachment.cni_id, attachment.netns,
                dumps([p.model_dump(mode="json") for p in attachment.ports]), utcnow().isoformat(),
            )
            for port in attachment.ports:
                tx.execute(
                    "INSERT INTO published_ports (host_ip, host_port, protocol, namespace, task_id)"
                    " VALUES (?, ?, ?, ?, ?)",
                    str(port.host_ip) if port.host_ip else "", port.host_port, port.protocol.value,
                    attachment.namespace, attachment.task_id,
                )

    async def set_result(self, namespace: str, task_id: str, result: dict[str, Any]) -> None:
        async with self._db.write() as tx:
            tx.execute(
                "UPDATE network_attachments SET result = ? WHERE namespace = ? AND task_id = ?",
                dumps(result), namespace, task_id,
            )

    async def attachment(self, namespace: str, task_id: str) -> Attachment | None:
        row = await self._db.one(
            "SELECT * FROM network_attachments WHERE namespace = ? AND task_id = ?", namespace, task_id
        )
        return _attachment(row) if row is not None else None

    async def detach(self, namespace: str, task_id: str) -> None:
        """Forget the attachment and free its ports (idempotent)."""
        async with self._db.write() as tx:
            tx.execute("DELETE FROM network_attachments WHERE namespace = ? AND task_id = ?", namespace, task_id)

    async def all_attachments(self) -> list[Attachment]:
        return [_attachment(row) for row in await self._db.all("SELECT * FROM network_attachments")]

    async def unowned(self) -> list[Attachment]:
        """Attachments no task row owns: a create or a teardown a crash interrupted."""
        rows = await self._db.all(
            "SELECT * FROM network_attachments AS a WHERE NOT EXISTS"
            " (SELECT 1 FROM tasks AS t WHERE t.namespace = a.namespace AND t.id = a.task_id)"
        )
        return [_attachment(row) for row in rows]
