"""The daemon's own Prometheus metrics: events published, SSE subscribers, tasks by
status, monitor poll durations.

Registered on the app's own `CollectorRegistry`, so each app (and each test) has its
own figures. Subscriber counts are read from the bus at scrape time, not kept twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .models import Event


class _SubscriberCollector(Collector):
    def __init__(self) -> None:
        self.count: Callable[[], int] = lambda: 0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "cargohold_sse_subscribers", "Open server-sent event streams", value=self.count()
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("cargohold_sse_subscribers", "Open server-sent event streams")


class DaemonMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._events = Counter(
            "cargohold_events", "Events published, by topic", ["topic"], registry=registry
        )
        self._subscribers = _SubscriberCollector()
        registry.register(self._subscribers)
        self._tasks = Gauge("cargohold_tasks", "Tasks, by status", ["status"], registry=registry)
        self._poll = Histogram(
            "cargohold_monitor_poll_seconds", "Time one monitor poll of every task's cgroup took",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0), registry=registry,
        )

    def observe_poll(self, seconds: float) -> None:
        self._poll.observe(seconds)

    def count_event(self, event: Event) -> None:
        self._events.labels(topic=event.topic).inc()

    def count_subscribers_with(self, count: Callable[[], int]) -> None:
        self._subscribers.count = count

    def set_task_counts(self, counts: dict[str, int]) -> None:
        """Refreshed from the store at each scrape; every status is always present."""
        for status in ("created", "running", "paused"):
            self._tasks.labels(status=status).set(counts.get(status, 0))
