"""The node's metrics are plain numbers on the hot path and the usual Prometheus families on a
scrape (node/metrics.py): names, types, labels and values as prometheus_client's own metrics
showed them."""

from __future__ import annotations

import pytest
from prometheus_client import Counter
from prometheus_client.parser import text_string_to_metric_families

from vim_cluster.node.metrics import LATENCY_BUCKETS, NodeMetrics


def scrape(metrics: NodeMetrics) -> dict[str, tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]]:
    """{family name: (type, {(sample name, labels): value})} of one /metrics text."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        out[family.name] = (family.type, samples)
    return out


def test_a_fresh_node_shows_every_family_with_its_type() -> None:
    families = scrape(NodeMetrics("n-1"))
    types = {name: kind for name, (kind, _) in families.items()}
    assert types == {
        "vim_connections": "gauge",
        "vim_messages_in": "counter", "vim_messages_in_created": "gauge",
        "vim_frames_out": "counter", "vim_frames_out_created": "gauge",
        "vim_presence_frames": "counter", "vim_presence_frames_created": "gauge",
        "vim_forward_queue_depth": "gauge",
        "vim_forward_dropped_frames": "counter", "vim_forward_dropped_frames_created": "gauge",
        "vim_relay_latency_seconds": "histogram", "vim_relay_latency_seconds_created": "gauge",
        "vim_connections_refused": "counter", "vim_connections_refused_created": "gauge",
        "vim_client_connections_open": "gauge", "vim_client_connections_unauthenticated": "gauge",
        "vim_node_info": "gauge",
    }
    assert families["vim_node_info"][1] == {("vim_node_info", (("node", "n-1"),)): 1.0}
    refused = families["vim_connections_refused"][1]  # every port and reason from the start, at 0
    assert refused == {("vim_connections_refused_total", (("port", port), ("reason", reason))): 0.0
                       for port in ("client", "forward", "http") for reason in ("address", "pending", "node")}
    assert families["vim_messages_in"][1] == {("vim_messages_in_total", ()): 0.0}


def test_counts_levels_and_latencies_are_what_a_scrape_shows() -> None:
    metrics = NodeMetrics("n-1")
    queue = [7]
    metrics.bind(lambda: 3, lambda: queue[0])
    metrics.message_accepted()
    metrics.message_accepted()
    metrics.frames_out.inc(5)
    metrics.frames_out.inc(0)
    metrics.presence_frames.inc()
    for seconds in (0.0004, 0.0005, 0.003, 0.003, 20.0):
        metrics.relay_delivered(seconds)
    queue[0] = 9  # read at the scrape, not at bind
    families = scrape(metrics)
    assert metrics.accepted == 2
    assert families["vim_messages_in"][1][("vim_messages_in_total", ())] == 2
    assert families["vim_frames_out"][1][("vim_frames_out_total", ())] == 5
    assert families["vim_presence_frames"][1][("vim_presence_frames_total", ())] == 1
    assert families["vim_connections"][1] == {("vim_connections", ()): 3}
    assert families["vim_forward_queue_depth"][1] == {("vim_forward_queue_depth", ()): 9}
    histogram = families["vim_relay_latency_seconds"][1]
    buckets = {dict(labels)["le"]: value for (name, labels), value in histogram.items() if name.endswith("_bucket")}
    assert len(buckets) == len(LATENCY_BUCKETS) + 1
    assert (buckets["0.0005"], buckets["0.002"], buckets["0.005"], buckets["10.0"], buckets["+Inf"]) == (2, 2, 4, 4, 5)
    assert histogram[("vim_relay_latency_seconds_count", ())] == 5
    assert histogram[("vim_relay_latency_seconds_sum", ())] == pytest.approx(20.0069)
    assert metrics.take_latencies() == [0.0004, 0.0005, 0.003, 0.003, 20.0] and metrics.take_latencies() == []


def test_new_counters_and_gauges_are_one_line_each_and_names_stay_unique() -> None:
    metrics = NodeMetrics("n-1")
    takeovers = metrics.counter("vim_master_takeovers_total", "times this node became the master")
    epoch = metrics.gauge("vim_master_epoch", "the master lock's epoch")
    takeovers.inc()
    epoch.set(4)
    # a prometheus_client metric in the same registry shows beside them
    Counter("vim_other", "off the hot path", registry=metrics.registry).inc(2)
    families = scrape(metrics)
    assert families["vim_master_takeovers"] == ("counter", {("vim_master_takeovers_total", ()): 1})
    assert families["vim_master_epoch"] == ("gauge", {("vim_master_epoch", ()): 4})
    assert families["vim_other"][1][("vim_other_total", ())] == 2
    assert metrics.registry.get_sample_value("vim_master_takeovers_total") == 1
    with pytest.raises(ValueError, match="declared twice"):
        metrics.gauge("vim_master_epoch", "again")
