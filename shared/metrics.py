"""Prometheus metrics, one registry per service process, named per Prometheus conventions.

Labels are bounded: route templates, topics, groups, partitions; never a rider or an id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class Metrics:
    """The metrics of one service; travels in the app, never global."""

    service: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.request_duration = Histogram(
            f"{self.service}_request_duration_seconds",
            "HTTP request latency by route, method and status code.",
            ["route", "method", "code"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.bus_published = Counter(
            "bus_published_total",
            "Events published from the outbox to streams.",
            ["topic"],
            registry=r,
        )
        self.bus_applied = Counter(
            "bus_applied_total",
            "Events applied by a consumer group.",
            ["topic", "group"],
            registry=r,
        )
        self.bus_duplicates = Counter(
            "bus_duplicates_total",
            "Deliveries skipped because the inbox had the event.",
            ["topic", "group"],
            registry=r,
        )
        self.bus_deadletter = Counter(
            "bus_deadletter_total",
            "Entries parked in a dead-letter stream.",
            ["topic", "group", "reason"],
            registry=r,
        )
        self.bus_pending = Gauge(
            "bus_pending_entries",
            "Entries delivered to the group and not yet acknowledged.",
            ["topic", "group"],
            registry=r,
        )
        self.bus_outbox_backlog = Gauge(
            "bus_outbox_backlog",
            "Outbox rows written and not yet published.",
            registry=r,
        )
