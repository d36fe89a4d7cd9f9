"""The NLG server's Prometheus metrics (``GET /metrics``), in a registry of their own per app,
so that several apps in one process (the tests) count separately."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rasa_hred.serving.generator import ResponseGenerator

# Request kinds, the `kind` label of the request metrics.
HRED, TEMPLATE, UNKNOWN, INVALID, UNAUTHORIZED, ERROR = (
    "hred",
    "template",
    "unknown",
    "invalid",
    "unauthorized",
    "error",
)


class BatchCollector:
    """Exposes the generator's micro-batching statistics at scrape time."""

    BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

    def __init__(self, generator: ResponseGenerator) -> None:
        self.generator = generator

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        stats = self.generator.stats
        sizes = dict(stats.sizes)
        buckets = []
        for bound in self.BUCKETS:
            buckets.append((str(float(bound)), sum(n for s, n in sizes.items() if s <= bound)))
        buckets.append(("+Inf", sum(sizes.values())))
        yield HistogramMetricFamily(
            "rasa_hred_nlg_batch_size",
            "Contexts per decoded batch (the generator's micro-batcher)",
            buckets=buckets,
            sum_value=float(sum(s * n for s, n in sizes.items())),
        )
        yield GaugeMetricFamily(
            "rasa_hred_nlg_largest_batch", "Largest batch decoded so far", value=stats.largest_batch
        )
        yield CounterMetricFamily(
            "rasa_hred_nlg_generator_busy_seconds",
            "Seconds the generator's worker spent decoding",
            value=stats.busy_seconds,
        )


@dataclass
class ServerMetrics:
    """The server's Prometheus metrics, in a registry of its own (one per app)."""

    generator: ResponseGenerator
    registry: Any = field(init=False)

    def __post_init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "rasa_hred_nlg_requests",
            "NLG requests answered, by response kind (hred, template, unknown, invalid, "
            "unauthorized, error) and HTTP status",
            ["kind", "status"],
            registry=registry,
        )
        self.errors = Counter(
            "rasa_hred_nlg_errors",
            "Failures: generation (answered with the fallback), render, internal",
            ["type"],
            registry=registry,
        )
        self.latency = Histogram(
            "rasa_hred_nlg_request_seconds",
            "Time to answer an NLG request, by response kind",
            ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=registry,
        )
        self.replies = Counter(
            "rasa_hred_nlg_generated_replies", "HRED replies generated", registry=registry
        )
        self.fallbacks = Counter(
            "rasa_hred_nlg_fallback_replies",
            "HRED requests answered with the fallback (generation failed or was empty)",
            registry=registry,
        )
        self.active = 0
        self.in_flight = Gauge(
            "rasa_hred_nlg_in_flight", "NLG requests being answered now", registry=registry
        )
        self.in_flight.set_function(lambda: self.active)
        registry.register(BatchCollector(self.generator))

    def observe(self, kind: str, status: int, started: float | None) -> None:
        self.requests.labels(kind, str(status)).inc()
        if started is not None:
            self.latency.labels(kind).observe(time.perf_counter() - started)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
