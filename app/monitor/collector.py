"""Prometheus export of the monitor's cached figures, as containerd's cgroups metrics:
a table of descriptors (name, type, help, getter) turned into metric families at scrape
time. A scrape reads no cgroup file; a task that is no longer watched has no series."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .cgroup_stats import CgroupStats
from .monitor import Monitor

LABELS = ["namespace", "container_id"]


@dataclass(frozen=True)
class Descriptor:
    name: str
    kind: type[GaugeMetricFamily] | type[CounterMetricFamily]
    help: str
    value: Callable[[CgroupStats], float | int | None]


DESCRIPTORS = (
    Descriptor("container_memory_usage_bytes", GaugeMetricFamily, "Memory in use", lambda s: s.memory_usage_bytes),
    Descriptor("container_memory_limit_bytes", GaugeMetricFamily, "Memory limit (absent: unlimited)",
               lambda s: s.memory_limit_bytes),
    Descriptor("container_memory_rss_bytes", GaugeMetricFamily, "Anonymous (RSS) memory", lambda s: s.memory_rss_bytes),
    Descriptor("container_memory_oom_total", CounterMetricFamily, "Processes killed by the OOM killer",
               lambda s: s.oom_kill_count),
    Descriptor("container_cpu_usage_seconds_total", CounterMetricFamily, "CPU time consumed",
               lambda s: s.cpu_usage_seconds),
    Descriptor("container_cpu_throttled_seconds_total", CounterMetricFamily, "Time throttled by the CPU quota",
               lambda s: s.cpu_throttled_seconds),
    Descriptor("container_pids_current", GaugeMetricFamily, "Processes and threads", lambda s: s.pids_current),
)


class ContainerCollector(Collector):
    """Registered when the app is built; `monitor` is set while the daemon runs."""

    def __init__(self) -> None:
        self.monitor: Monitor | None = None

    def describe(self) -> Iterator[Metric]:
        for descriptor in DESCRIPTORS:
            yield descriptor.kind(descriptor.name, descriptor.help, labels=LABELS)
        yield CounterMetricFamily("container_blkio_bytes_total", "Block I/O bytes", labels=[*LABELS, "op"])

    def collect(self) -> Iterator[Metric]:
        figures = self.monitor.all_latest() if self.monitor is not None else {}
        for descriptor in DESCRIPTORS:
            family = descriptor.kind(descriptor.name, descriptor.help, labels=LABELS)
            for (namespace, container_id), figure in figures.items():
                value = descriptor.value(figure.stats)
                if value is not None:
                    family.add_metric([namespace, container_id], value)
            yield family
        blkio = CounterMetricFamily("container_blkio_bytes_total", "Block I/O bytes", labels=[*LABELS, "op"])
        for (namespace, container_id), figure in figures.items():
            for op, value in sorted(figure.stats.blkio_bytes.items()):
                blkio.add_metric([namespace, container_id, op], value)
        yield blkio
