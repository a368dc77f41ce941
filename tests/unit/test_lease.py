"""core/lease.py: what a heartbeat's answer means, and when a worker id may mint (no I/O).

The last test runs the rules against a model of Redis's worker keys (TTL, SET NX, the
generation marker exactly as the adapter's script keeps it) in virtual time, through resets,
flushes, partitions, slow answers, crashes and new nodes, and checks the two promises: the
minting intervals of one worker id never overlap, and each starts after the previous one ended.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Literal

import attrs
import pytest

from vim_cluster.core.lease import (
    BeatReport,
    Generation,
    KeyState,
    LeaseSightings,
    MintGate,
    decide_beat,
)
from vim_cluster.tunables import DEFAULTS

HOLD_S, LEASE_TTL_S, SETTLE_S = DEFAULTS.lease_hold_s, DEFAULTS.lease_ttl_s, DEFAULTS.lease_settle_s

OLD = Generation("g1", 3600.0)


def report(node: KeyState = KeyState.RENEWED, master: KeyState = KeyState.ABSENT,
           worker: KeyState = KeyState.RENEWED, generation: Generation = OLD) -> BeatReport:
    return BeatReport(generation, node, master, worker)


def test_a_missing_key_is_retaken_not_lost() -> None:
    decision = decide_beat(report(KeyState.RETAKEN, KeyState.RETAKEN, KeyState.RETAKEN, Generation("g2", 0)), "g1")
    assert decision.lost is None
    assert decision.republish and decision.reset and not decision.worker_lost


def test_only_another_owner_is_a_loss() -> None:
    assert decide_beat(report(node=KeyState.OTHER), "g1").lost == "another process holds this node id"
    assert decide_beat(report(master=KeyState.OTHER), "g1").lost == "another node holds the master lock"
    worker = decide_beat(report(worker=KeyState.OTHER), "g1")
    assert worker.lost is None and worker.worker_lost


def test_a_plain_renewal_changes_nothing() -> None:
    assert decide_beat(report(), "g1") == decide_beat(report(), "g1")
    decision = decide_beat(report(), "g1")
    assert (decision.lost, decision.republish, decision.worker_lost, decision.reset) == (None, False, False, False)


def test_a_fresh_take_in_an_old_generation_mints_at_once() -> None:
    gate = MintGate()
    gate.took(5, OLD, sent_at=100.0, now=100.1)
    assert gate.wait_s(100.1) == 0


def test_a_fresh_take_in_a_young_generation_waits_until_it_settled() -> None:
    gate = MintGate()
    gate.took(5, Generation("g2", 2.0), sent_at=100.0, now=100.1)
    assert gate.wait_s(100.1) == pytest.approx(SETTLE_S - 2.0)
    gate.renewed(102.0)
    assert gate.wait_s(100.1 + SETTLE_S - 2.0) == 0


def test_the_holder_retaking_its_own_id_after_a_loss_keeps_minting() -> None:
    gate = MintGate()
    gate.took(5, OLD, sent_at=100.0, now=100.0)
    gate.took(5, Generation("g2", 0.0), sent_at=102.0, now=102.1)  # Redis came back empty
    assert gate.wait_s(102.1) == 0


def test_a_holder_whose_right_ran_out_takes_its_id_afresh() -> None:
    gate = MintGate()
    gate.took(5, OLD, sent_at=100.0, now=100.0)
    assert gate.wait_s(100.0 + HOLD_S) is None  # Redis unreachable for HOLD_S: no minting
    gate.took(5, Generation("g2", 1.0), sent_at=120.0, now=120.0)
    assert gate.wait_s(120.0) == pytest.approx(SETTLE_S - 1.0)


def test_a_lost_id_stops_minting_at_once() -> None:
    gate = MintGate()
    gate.took(5, OLD, sent_at=100.0, now=100.0)
    gate.lost()
    assert gate.worker is None and gate.wait_s(100.1) is None


def test_the_hold_is_shorter_than_the_key_ttl() -> None:
    assert HOLD_S < LEASE_TTL_S and SETTLE_S > HOLD_S


# -- a model of Redis's worker keys, driven in virtual time -------------------------------------


@attrs.define
class ModelRedis:
    """Worker keys with TTLs and the generation marker, as the adapter's Lua keeps them."""

    run_id: int = 0
    keys: dict[int, tuple[str, float]] = attrs.Factory(dict)  # worker -> (owner, expires at)
    marker: tuple[str, int, float] | None = None  # token, run id, born at
    tokens: int = 0

    def _generation(self, now: float) -> Generation:
        if self.marker is None or self.marker[1] != self.run_id:
            self.tokens += 1
            self.marker = (f"g{self.tokens}", self.run_id, now)
        return Generation(self.marker[0], now - self.marker[2])

    def _expire(self, now: float) -> None:
        self.keys = {w: v for w, v in self.keys.items() if v[1] > now}

    def take(self, owner: str, now: float, workers: int) -> tuple[int, Generation] | None:
        self._expire(now)
        generation = self._generation(now)
        for worker in range(workers):
            if worker not in self.keys:
                self.keys[worker] = (owner, now + LEASE_TTL_S)
                return worker, generation
        return None

    def beat(self, owner: str, worker: int | None, now: float) -> tuple[KeyState, Generation]:
        self._expire(now)
        generation = self._generation(now)
        if worker is None:
            return KeyState.ABSENT, generation
        holder = self.keys.get(worker)
        if holder is not None and holder[0] != owner:
            return KeyState.OTHER, generation
        self.keys[worker] = (owner, now + LEASE_TTL_S)
        return (KeyState.RENEWED if holder else KeyState.RETAKEN), generation

    def release(self, owner: str, worker: int | None) -> None:
        if worker is not None and self.keys.get(worker, ("", 0))[0] == owner:
            del self.keys[worker]

    def lose_everything(self, restart: bool) -> None:
        self.keys.clear()
        self.marker = None
        self.run_id += restart


# An answer in flight: (arrives at, kind, payload, sent at); a beat's payload carries the worker
# id it beat for.
Answer = (tuple[float, Literal["took"], tuple[int, Generation], float]
          | tuple[float, Literal["beat"], tuple[int, KeyState, Generation], float])


@attrs.define
class ModelNode:
    name: str
    gate: MintGate = attrs.Factory(MintGate)
    generation: str | None = None
    next_beat: float = 0.0
    cut_off_until: float = -math.inf  # partitioned from Redis (but still serving clients)
    pending: list[Answer] = attrs.Factory(list)  # answers in flight
    alive: bool = True


def simulate(seed: int, duration: float = 600.0, step: float = 0.05, workers: int = 3) -> dict[int, list[tuple[float, str]]]:
    """Returns worker -> [(time, node)] of every mint; few worker ids, so they are fought over."""
    rng = random.Random(seed)
    redis = ModelRedis()
    nodes: list[ModelNode] = []
    mints: dict[int, list[tuple[float, str]]] = defaultdict(list)
    now = 0.0
    while now < duration:
        if rng.random() < 0.004:
            redis.lose_everything(restart=rng.random() < 0.5)  # a crash or a flush
        if rng.random() < 0.01 and sum(n.alive for n in nodes) < workers + 1:
            nodes.append(ModelNode(f"n{len(nodes)}", next_beat=now))
        for node in nodes:
            if not node.alive:
                continue
            if rng.random() < 0.002:  # a crash: it stops minting; its keys expire
                node.alive = False
                continue
            if rng.random() < 0.002:
                node.cut_off_until = now + rng.uniform(1, 25)
            if rng.random() < 0.001:  # a clean stop: it stops minting, then releases
                node.alive = False
                redis.release(node.name, node.gate.worker)
                continue
            _answers(node, now)
            if now >= node.next_beat:
                node.next_beat = now + 2.0
                if now >= node.cut_off_until:
                    _ask(node, redis, now, rng.uniform(0.0, 1.5), workers)
            if node.gate.wait_s(now) == 0:
                assert node.gate.worker is not None
                mints[node.gate.worker].append((now, node.name))
        now = round(now + step, 6)
    return mints


def _ask(node: ModelNode, redis: ModelRedis, now: float, latency: float, workers: int) -> None:
    """The request runs on the server now; its answer reaches the node `latency` later."""
    if node.gate.worker is None:
        taken = redis.take(node.name, now, workers)
        if taken is not None:
            node.pending.append((now + latency, "took", taken, now))
        return
    state, generation = redis.beat(node.name, node.gate.worker, now)
    node.pending.append((now + latency, "beat", (node.gate.worker, state, generation), now))


def _answers(node: ModelNode, now: float) -> None:
    for answer in [a for a in node.pending if a[0] <= now]:
        node.pending.remove(answer)
        sent = answer[3]
        if answer[1] == "took":
            worker, generation = answer[2]
            node.gate.took(worker, generation, sent, now)
            node.generation = generation.token
            continue
        worker, state, generation = answer[2]
        if worker != node.gate.worker:
            continue
        if state is KeyState.RETAKEN:
            node.gate.took(worker, generation, sent, now)
        elif state is KeyState.RENEWED:
            node.gate.renewed(sent)
        elif state is KeyState.OTHER:
            node.gate.lost()
        node.generation = generation.token


def overlaps(mints: dict[int, list[tuple[float, str]]]) -> list[tuple[int, float, set[str]]]:
    """(worker, time, holders) wherever two nodes minted with one worker id in one tick: every
    node allowed to mint mints every tick, so overlapping rights always show up as such a tick."""
    found = []
    for worker, events in mints.items():
        at: dict[float, set[str]] = defaultdict(set)
        for time, node in events:
            at[time].add(node)
        found += [(worker, time, holders) for time, holders in at.items() if len(holders) > 1]
    return found


def handovers(mints: dict[int, list[tuple[float, str]]]) -> int:
    return sum(a[1] != b[1] for events in mints.values() for a, b in zip(events, events[1:], strict=False))


@pytest.mark.parametrize("seed", range(12))
def test_worker_ids_never_mint_at_once_through_losses_of_redis(seed: int) -> None:
    """One minting interval per worker id at a time, and (one clock) each after the last: so an
    id reused after a loss never mints an id minted before."""
    mints = simulate(seed)
    assert sum(len(m) for m in mints.values()) > 1000, "the simulation minted too little to prove anything"
    assert handovers(mints) > 0, "no worker id changed hands: the simulation tested nothing"
    assert not overlaps(mints), f"seed {seed}: {overlaps(mints)[:3]}"


def test_the_simulation_sees_overlaps_without_the_settling_wait() -> None:
    """The check above can fail: with SETTLE_S waived, fresh takes after a loss overlap."""
    original = MintGate.took

    def eager(self: MintGate, worker: int, generation: Generation, sent_at: float, now: float) -> None:
        original(self, worker, Generation(generation.token, 1e9), sent_at, now)

    MintGate.took = eager  # type: ignore[method-assign]
    try:
        found = sum(len(overlaps(simulate(seed))) for seed in range(12))
    finally:
        MintGate.took = original  # type: ignore[method-assign]
    assert found > 0


def test_lease_sightings_tell_a_released_lock_from_a_lapsed_one_by_the_renewals_seen() -> None:
    """A registration that changed between two reads shows a renewal after the earlier one:
    the lock holds LEASE_TTL_S past that read unless released. Nothing is known before a
    change was seen; only the reader's clock counts (the nodes' heartbeat_at is compared only
    with itself)."""
    seen = LeaseSightings(10_000)
    seen.saw({"dept-2": 7_000_000}, 1_000)  # a node clock far off: never compared with ours
    assert seen.released("dept-2", 1_500) is None  # a first read: when it beat is unknown
    seen.saw({"dept-2": 7_000_000}, 3_000)
    assert seen.released("dept-2", 3_500) is None  # no renewal seen yet
    seen.saw({"dept-2": 7_002_000}, 5_000)  # renewed after the read at 3 s: held until 13 s
    assert seen.released("dept-2", 12_999) is True
    assert seen.released("dept-2", 13_000) is False  # it may have lapsed by now
    seen.saw({"dept-2": 7_002_000}, 7_000)  # no beat since: the bound stays
    assert seen.released("dept-2", 13_000) is False
    seen.saw({}, 9_000)  # forgotten by Redis (not listed): forgotten here
    assert seen.released("dept-2", 9_500) is None
