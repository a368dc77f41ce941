"""Prometheus metrics of one node (its own registry: tests run several nodes in a process).

The hot path only adds to plain numbers: `Count.inc`, `Level.set`, `Spread.observe` are an
attribute update each, with no lock and no label lookup (a node is one trio thread). One
collector registered in the node's registry turns them into the usual families when /metrics
is scraped: a `Count` named `x` shows as the counter `x_total` (with `x_created`), a `Level` as
a gauge, a `Spread` as a histogram (`_bucket`, `_sum`, `_count`, `_created`).

New metrics: `metrics.counter(name, help)`, `metrics.gauge(name, help)` (or `.set_function`),
`metrics.histogram(name, help, buckets)`; the objects also answer prometheus_client's calls
(`inc`, `set`, `observe`). A prometheus_client metric registered in `metrics.registry` works
too, for code off the hot path or in another thread.
"""

from __future__ import annotations

import bisect
import collections
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from ..core.conn_caps import Refusal

RECENT_LATENCIES = 4096
PORTS = ("client", "forward", "http")  # the ports whose connections are capped (node/admission.py)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Count:
    """A counter: only goes up."""

    __slots__ = ("name", "help", "value", "created")

    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self.value: float = 0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def family(self) -> Metric:
        return CounterMetricFamily(self.name, self.help, value=self.value, created=self.created)


class CountFamily:
    """Counters of one name told apart by labels (`child(values)`: a Count of its own)."""

    __slots__ = ("name", "help", "labels", "children")

    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        self.name, self.help, self.labels = name, help, tuple(labels)
        self.children: dict[tuple[str, ...], Count] = {}

    def child(self, *values: str) -> Count:
        count = self.children.get(values)
        if count is None:
            count = self.children[values] = Count(self.name, self.help)
        return count

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.help, labels=self.labels)
        for values, count in self.children.items():
            family.add_metric(list(values), count.value, created=count.created)
        return family


class Level:
    """A gauge: a value set by the node, or read from `function` at each scrape."""

    __slots__ = ("name", "help", "value", "function", "labels")

    def __init__(self, name: str, help: str, labels: dict[str, str] | None = None) -> None:
        self.name, self.help = name, help
        self.value: float = 0
        self.function: Callable[[], float] | None = None
        self.labels = labels or {}

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set_function(self, function: Callable[[], float]) -> None:
        self.function = function

    def family(self) -> Metric:
        value = self.function() if self.function is not None else self.value
        family = GaugeMetricFamily(self.name, self.help, labels=list(self.labels))
        family.add_metric(list(self.labels.values()), value)
        return family


class Spread:
    """A histogram: counts per bucket (not cumulative until scraped) and the sum."""

    __slots__ = ("name", "help", "bounds", "counts", "sum", "created")

    def __init__(self, name: str, help: str, buckets: Sequence[float]) -> None:
        self.name, self.help = name, help
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self) -> Metric:
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        family = HistogramMetricFamily(self.name, self.help, buckets=buckets, sum_value=self.sum)
        family.add_sample(f"{self.name}_created", {}, self.created)
        return family


class PlainCollector:
    """Hands the plain metrics to prometheus_client at scrape time, in declaration order."""

    def __init__(self) -> None:
        self.metrics: list[Count | CountFamily | Level | Spread] = []

    def collect(self) -> Iterator[Metric]:
        for metric in self.metrics:
            yield metric.family()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families are known at scrape time (added metrics too)


M = TypeVar("M", Count, CountFamily, Level, Spread)


class NodeMetrics:
    def __init__(self, node_id: str) -> None:
        self.registry = CollectorRegistry()
        self._plain = PlainCollector()
        self.registry.register(self._plain)
        self.connections = self.gauge("vim_connections", "open client sessions")
        self.messages_in = self.counter("vim_messages_in", "chat messages accepted (acked) from clients")
        self.frames_out = self.counter("vim_frames_out", "frames queued to client sessions")
        self.presence_frames = self.counter("vim_presence_frames", "presence frames queued to client sessions")
        self.forward_queue = self.gauge("vim_forward_queue_depth", "forward packets not yet acknowledged")
        self.forward_dropped = self.counter(
            "vim_forward_dropped_frames",
            "client frames a slave dropped from its forward queue past vim.cluster.forward-queue-bytes "
            "(their messages are caught up from the store)")
        self.relay_latency = self.histogram(
            "vim_relay_latency_seconds",
            "time from a frame entering the cluster to its delivery on another node",
            LATENCY_BUCKETS,
        )
        self._recent_latencies: collections.deque[float] = collections.deque(maxlen=RECENT_LATENCIES)
        self.refused = self._add(CountFamily(
            "vim_connections_refused",
            "connections refused at their accept by a connection cap (port: client, forward, http; "
            "reason: address, pending, node)", ("port", "reason")))
        for port in PORTS:  # every series from the start, at 0 (a rate() alert needs it)
            self.refusals(port)
        self.client_connections = self.gauge(
            "vim_client_connections_open", "TCP connections open on the client port, handshakes and anonymous ones too")
        self.client_unauthenticated = self.gauge(
            "vim_client_connections_unauthenticated",
            "connections open on the client port that have not authenticated yet")
        self.info = self.gauge("vim_node_info", "constant 1, labelled with the node id", labels={"node": node_id})
        self.info.set(1)

    def counter(self, name: str, help: str) -> Count:
        """A new counter `name` (shown as `name_total`; give it without `_total`)."""
        return self._add(Count(name.removesuffix("_total"), help))

    def gauge(self, name: str, help: str, labels: dict[str, str] | None = None) -> Level:
        return self._add(Level(name, help, labels))

    def histogram(self, name: str, help: str, buckets: Sequence[float]) -> Spread:
        return self._add(Spread(name, help, buckets))

    def _add(self, metric: M) -> M:
        if any(m.name == metric.name for m in self._plain.metrics):
            raise ValueError(f"metric {metric.name} is declared twice")
        self._plain.metrics.append(metric)
        return metric

    def refusals(self, port: str) -> dict[Refusal, Count]:
        """The refusal counters of one port (PORTS), by reason."""
        return {reason: self.refused.child(port, reason.name.lower()) for reason in Refusal}

    @property
    def accepted(self) -> int:
        """Chat messages accepted since the node started (the dashboard's msgs/s)."""
        return int(self.messages_in.value)

    def relay_delivered(self, seconds: float) -> None:
        self.relay_latency.observe(seconds)
        self._recent_latencies.append(seconds)

    def take_latencies(self) -> list[float]:
        """Relay latencies (s) observed since the last call (the newest RECENT_LATENCIES)."""
        taken = list(self._recent_latencies)
        self._recent_latencies.clear()
        return taken

    def message_accepted(self) -> None:
        self.messages_in.value += 1

    def certificate_ends(self, at: float) -> None:
        """Exports the end of the node's TLS certificate (only nodes with TLS have the gauge:
        on others an alert on it would fire)."""
        self.gauge("vim_tls_certificate_expiry_timestamp_seconds",
                   "when the node's TLS certificate expires (Unix time)").set(at)

    def bind(self, connections: Callable[[], int], forward_queue: Callable[[], int]) -> None:
        self.connections.set_function(connections)
        self.forward_queue.set_function(forward_queue)

    def render(self) -> bytes:
        return generate_latest(self.registry)
