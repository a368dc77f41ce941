"""The connection caps' counter (core/conn_caps.py), without sockets, and the refusal answers
and their log (node/admission.py)."""

from __future__ import annotations

import logging

import pytest
import structlog
import trio
from structlog.testing import LogCapture

from vim_cluster.core.conn_caps import ConnectionCaps, Refusal, Slot, loopback_key
from vim_cluster.core.lockout import source_key
from vim_cluster.node.admission import WARN_EVERY_S, Admission, default_total
from vim_cluster.node.metrics import NodeMetrics


def caps(per_address: int | None = 3, pending: int | None = 2, total: int | None = None) -> ConnectionCaps:
    return ConnectionCaps(per_address=per_address, pending_per_address=pending, total=total)


def slot(admitted: Slot | Refusal) -> Slot:
    assert isinstance(admitted, Slot), admitted
    return admitted


def test_an_address_gets_its_unauthenticated_cap_then_its_total_cap() -> None:
    counts = caps(per_address=3, pending=2)
    first, second = slot(counts.admit("10.0.0.1")), slot(counts.admit("10.0.0.1"))
    assert counts.admit("10.0.0.1") is Refusal.PENDING  # two handshakes pending: the third is one too many
    first.authenticated()
    third = slot(counts.admit("10.0.0.1"))
    assert counts.held_by("10.0.0.1") == (3, 2)
    second.authenticated()
    third.authenticated()
    assert counts.admit("10.0.0.1") is Refusal.ADDRESS  # three open, none pending: the address's cap
    assert counts.held_by("10.0.0.1") == (3, 0)


def test_other_addresses_are_not_affected() -> None:
    counts = caps(per_address=1, pending=1)
    slot(counts.admit("10.0.0.1"))
    assert counts.admit("10.0.0.1") is Refusal.ADDRESS
    slot(counts.admit("10.0.0.2"))
    slot(counts.admit(source_key("2001:db8::1")))
    assert counts.admit(source_key("2001:db8::2")) is Refusal.ADDRESS  # the same /64
    assert counts.open == 3 and counts.pending == 3


def test_a_release_frees_the_slot_and_forgets_an_address_that_holds_none() -> None:
    counts = caps(per_address=2, pending=1)
    first = slot(counts.admit("10.0.0.1"))
    assert counts.admit("10.0.0.1") is Refusal.PENDING
    first.release()
    assert counts.by_address == {} and counts.open == counts.pending == 0
    first.release()  # again: nothing
    first.authenticated()  # after its release: nothing
    assert counts.open == counts.pending == 0
    again = slot(counts.admit("10.0.0.1"))
    again.authenticated()
    again.authenticated()  # twice: counted once
    assert counts.held_by("10.0.0.1") == (1, 0) and counts.pending == 0
    other = slot(counts.admit("10.0.0.1"))
    again.release()
    assert counts.held_by("10.0.0.1") == (1, 1)
    other.release()
    assert counts.by_address == {} and counts.open == counts.pending == 0


def test_loopback_is_counted_in_the_total_only() -> None:
    counts = caps(per_address=1, pending=1, total=3)
    held = [slot(counts.admit(source_key(address))) for address in ("127.0.0.1", "127.0.0.2", "::1")]
    assert counts.by_address == {} and counts.open == 3
    assert counts.admit("10.0.0.1") is Refusal.NODE  # the node-wide cap counts everyone
    assert counts.admit("127.0.0.1") is Refusal.NODE
    held[0].release()
    slot(counts.admit("10.0.0.1"))
    assert counts.held_by("10.0.0.1") == (1, 1)


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1", True), ("127.255.0.9", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.0.0.1", False), ("1.127.0.0", False), ("2001:db8::1", False), ("::ffff:10.0.0.1", False),
])
def test_loopback_keys(address: str, loopback: bool) -> None:
    assert loopback_key(source_key(address)) is loopback


def test_no_cap_is_no_cap() -> None:
    counts = caps(per_address=None, pending=None)
    held = [slot(counts.admit("10.0.0.1")) for _ in range(1000)]
    assert counts.held_by("10.0.0.1") == (1000, 1000)
    for one in held:
        one.release()
    assert counts.by_address == {}


def test_the_default_node_wide_cap_leaves_the_node_descriptors() -> None:
    assert default_total(65536) == 65536 - 1024
    assert default_total(1024) == 768
    assert default_total(4) == 3
    assert default_total() >= 1


def test_a_refusal_answer_is_one_http_response_clients_can_tell_apart() -> None:
    metrics = NodeMetrics("n")
    admission = Admission("client", caps(per_address=4096, pending=256, total=100), metrics.refusals("client"))
    for refusal, status in ((Refusal.ADDRESS, b"429 Too Many Requests"), (Refusal.PENDING, b"429 Too Many Requests"),
                            (Refusal.NODE, b"503 Service Unavailable")):
        head, _, body = admission.answer(refusal).partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"HTTP/1.1 " + status
        assert b"Connection: close" in lines and any(line.startswith(b"Retry-After: ") for line in lines)
        assert f"Content-Length: {len(body)}".encode() in lines
        assert body.startswith(b"connection limit: ") and body.endswith(b"\n") and body.count(b"\n") == 1
    assert b"(4096)" in admission.answer(Refusal.ADDRESS) and b"(256)" in admission.answer(Refusal.PENDING)
    assert b"Retry-After: 10" in admission.answer(Refusal.PENDING)


async def test_refusals_are_counted_and_warned_of_at_most_once_a_minute(
        autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    captured = LogCapture()  # at debug level (the tests' is warning)
    monkeypatch.setattr("vim_cluster.node.admission.log", structlog.wrap_logger(
        None, processors=[captured], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG)))
    logs = captured.entries
    metrics = NodeMetrics("n")
    admission = Admission("client", caps(per_address=5, pending=1), metrics.refusals("client"))
    assert isinstance(admission.admit("10.0.0.1"), Slot)
    for _ in range(5):
        assert admission.admit("10.0.0.1") is Refusal.PENDING
    await trio.sleep(WARN_EVERY_S)
    assert admission.admit("10.0.0.1") is Refusal.PENDING
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [w["refused"] for w in warnings] == [1, 5]  # the first at once, then the rest a minute later
    assert all(w["event"] == "connections_refused" and w["port"] == "client" for w in warnings)
    assert sum(entry["event"] == "connection_refused" for entry in logs) == 6  # each at debug
    assert b'vim_connections_refused_total{port="client",reason="pending"} 6.0' in metrics.render()
    assert b'vim_connections_refused_total{port="client",reason="address"} 0.0' in metrics.render()
