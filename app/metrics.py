"""The daemon's own Prometheus metrics: events published and SSE subscribers.

Registered on the app's own `CollectorRegistry`, so each app (and each test) has its
own figures. Subscriber counts are read from the bus at scrape time, not kept twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter
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

    def count_event(self, event: Event) -> None:
        self._events.labels(topic=event.topic).inc()

    def count_subscribers_with(self, count: Callable[[], int]) -> None:
        self._subscribers.count = count
