"""Prometheus export of attached tasks' network counters:
`container_network_receive_bytes_total` and `container_network_transmit_bytes_total`,
labelled by namespace, container id and the task's interface, read at scrape time from
the host side of each task's veth (`NetworkService.counters`)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from .service import NetworkService

LABELS = ["namespace", "container_id", "interface"]
RECEIVE = ("container_network_receive_bytes_total", "Bytes received by the task's network interface")
TRANSMIT = ("container_network_transmit_bytes_total", "Bytes transmitted by the task's network interface")


class NetworkCollector(Collector):
    """Registered when the app is built; `networks` is set while the daemon runs."""

    def __init__(self) -> None:
        self.networks: NetworkService | None = None

    def describe(self) -> Iterator[Metric]:
        for name, help_text in (RECEIVE, TRANSMIT):
            yield CounterMetricFamily(name, help_text, labels=LABELS)

    def collect(self) -> Iterator[Metric]:
        counters = self.networks.counters() if self.networks is not None else {}
        receive, transmit = (CounterMetricFamily(name, text, labels=LABELS) for name, text in (RECEIVE, TRANSMIT))
        for (namespace, container_id), interfaces in sorted(counters.items()):
            for interface, (received, transmitted) in sorted(interfaces.items()):
                receive.add_metric([namespace, container_id, interface], received)
                transmit.add_metric([namespace, container_id, interface], transmitted)
        yield receive
        yield transmit
