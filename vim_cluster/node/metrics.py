"""Prometheus metrics of one node (its own registry: tests run several nodes in a process)."""

from __future__ import annotations

import collections
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

RECENT_LATENCIES = 4096
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class NodeMetrics:
    def __init__(self, node_id: str) -> None:
        self.registry = CollectorRegistry()
        self.accepted = 0
        labels = {"node": node_id}
        self.connections = Gauge("vim_connections", "open client sessions", registry=self.registry)
        self.messages_in = Counter(
            "vim_messages_in", "chat messages accepted (acked) from clients", registry=self.registry
        )
        self.frames_out = Counter(
            "vim_frames_out", "frames queued to client sessions", registry=self.registry
        )
        self.presence_frames = Counter(
            "vim_presence_frames", "presence frames queued to client sessions", registry=self.registry
        )
        self.forward_queue = Gauge(
            "vim_forward_queue_depth", "forward packets not yet acknowledged", registry=self.registry
        )
        self.relay_latency = Histogram(
            "vim_relay_latency_seconds",
            "time from a frame entering the cluster to its delivery on another node",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._recent_latencies: collections.deque[float] = collections.deque(maxlen=RECENT_LATENCIES)
        self.info = Gauge("vim_node_info", "constant 1, labelled with the node id", ["node"],
                          registry=self.registry)
        self.info.labels(**labels).set(1)

    def relay_delivered(self, seconds: float) -> None:
        self.relay_latency.observe(seconds)
        self._recent_latencies.append(seconds)

    def take_latencies(self) -> list[float]:
        """Relay latencies (s) observed since the last call (the newest RECENT_LATENCIES)."""
        taken = list(self._recent_latencies)
        self._recent_latencies.clear()
        return taken

    def message_accepted(self) -> None:
        self.messages_in.inc()
        self.accepted += 1

    def bind(self, connections: Callable[[], int], forward_queue: Callable[[], int]) -> None:
        self.connections.set_function(connections)
        self.forward_queue.set_function(forward_queue)

    def render(self) -> bytes:
        return generate_latest(self.registry)
