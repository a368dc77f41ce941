"""The deployment vim-cluster exists for, for real: one master and two department nodes on
different hosts (network namespaces on a bridge), a shared Debian redis-server, MariaDB and
FerretDB on a db host, clients on their own host, every link over TLS, the nodes running the
container configs (docker/node-configs/) unchanged. See multihost.py for the hosts, agent.py for
what runs on the clients host.

Needs root, `ip` (iproute2) and redis-server; elsewhere it skips saying how to get them (in CI,
VIM_REQUIRE_TEST_SERVERS=1, it fails instead).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..servers import find_ferretdb, find_mariadb, unavailable
from . import netns
from .multihost import NODE_CONFIGS, NODES, Deployment, missing_requirement

TLS = True  # every listener wss:// / HTTPS, slaves verify the master's certificate
CUT_S = 5.0  # how long a department's link stays cut
SEND_INTERVAL = 0.05  # a numbered message every 50 ms per sender


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    why = missing_requirement()
    if why:
        unavailable(f"multi-host test: {why}")
    find_mariadb(), find_ferretdb()  # each skips (or fails in CI) with how to get it
    netns.remove_stale()  # what a crashed earlier run left
    deployment = Deployment(tmp_path, netns.run_prefix(), tls=TLS)
    try:
        yield deployment.start()
    finally:
        deployment.stop()
        assert not [ns for ns in netns.namespaces() if ns.startswith(deployment.network.prefix)]


def table(stdout: str) -> dict[str, dict[str, str]]:
    """`vim-cluster nodes` output as {node: {column: cell}} (cells are 2+ spaces apart)."""
    lines = [line for line in stdout.split("\n\n")[0].splitlines() if line.strip()]  # the master summary follows
    header = re.split(r"\s{2,}", lines[0].strip())
    return {cells[0]: dict(zip(header, cells, strict=True))
            for cells in (re.split(r"\s{2,}", line.strip()) for line in lines[1:])}


def check_numbered(report: dict[str, Any]) -> None:
    """Nothing acked is lost, nothing duplicated after dedupe by id, per-sender order kept."""
    tag, acks, frames = report["tag"], report["acks"], report["frames"]
    assert report["sender_closed"] is None and report["recipient_closed"] is None, report
    first: dict[str, str] = {}  # message id -> cid, first arrivals in order
    for cid, message_id in frames:
        first.setdefault(message_id, cid)
    delivered_cids = list(first.values())
    lost = {cid: i for cid, i in acks.items() if i not in first}
    assert not lost, f"{tag}: acked but never delivered: {sorted(lost)[:10]} ({len(lost)} of {len(acks)})"
    assert len(delivered_cids) == len(set(delivered_cids)), f"{tag}: one cid stored under two ids"
    # The order PROTOCOL.md promises is the acks' order. A message refused with `error unavailable`
    # (its store cut off mid-commit) may still arrive later, when its node finishes the save
    # (operations.md, MongoDB row), after newer ones of a sender that did not wait for the error.
    numbers = [int(cid.rsplit("-", 1)[1]) for cid in delivered_cids if cid in acks]
    assert numbers == sorted(numbers), f"{tag}: out of order: {numbers}"
    assert all(first.get(i) == cid for cid, i in acks.items()), f"{tag}: an ack names another message's id"


@pytest.mark.timeout(300)
def test_a_cluster_across_hosts_serves_chats_operators_and_survives_a_cut_link(deployment: Deployment) -> None:
    d = deployment
    started = time.monotonic()
    prefix = f"mh{secrets.token_hex(3)}"
    master_config = str(d.configs["master"])
    for node in NODES:  # the container configs, byte for byte
        assert d.configs[node].read_bytes() == (NODE_CONFIGS / f"{node}.yaml").read_bytes()

    # -- register/login/ready on every node, chats across departments, offline replay --------
    flows = d.agent("clients", "flows", urls={node: d.client_url(node) for node in NODES}, prefix=prefix)
    users = flows.expect("ready", 60)["users"]
    assert set(users) == set(NODES)
    flows.expect("friend", 30)
    flows.expect("group", 30)
    assert len(flows.expect("offline", 30)["replayed"]) == 3

    # -- the operator, on the master host: nodes, heartbeat, whereis, kick -------------------
    erin = flows.expect("kick-ready", 30)
    nodes = d.cli("master", "nodes", "--config", master_config)
    assert nodes.returncode == 0, nodes
    rows = table(nodes.stdout)
    assert {node: rows[node]["ALIVE"] for node in NODES} == dict.fromkeys(NODES, "yes"), nodes.stdout
    # Every node advertises the name other hosts reach it by (vim.websocket.public-host).
    assert {node: rows[node]["URL"] for node in NODES} == {
        node: d.client_url(node) for node in NODES}, nodes.stdout
    beat = d.cli("master", "heartbeat", master_config)
    assert beat.returncode == 0 and "master: alive" in beat.stdout, beat
    where = d.cli("master", "whereis", erin["user"], "--config", master_config)
    assert where.returncode == 0, where
    assert sorted(line.split("\t")[0] for line in where.stdout.splitlines()) == ["dept-1", "dept-2"], where.stdout
    kick = d.cli("master", "kick", erin["user"], "--config", master_config)
    assert kick.returncode == 0 and "closed 2 session(s)" in kick.stdout, kick
    assert flows.expect("kicked", 60)["codes"] == [4002, 4002]
    assert flows.finish(30) == 0, flows.log_tail()
    deadline = time.monotonic() + 15
    while (gone := d.cli("master", "whereis", erin["user"], "--config", master_config)).returncode != 1:
        assert time.monotonic() < deadline, f"whereis still finds the kicked user: {gone}"
        time.sleep(0.3)  # polls the operator CLI (another process)
    flows_s = time.monotonic() - started

    # -- cut dept-1's link for CUT_S while numbered senders keep sending both ways -----------
    numbered = d.agent("clients", "numbered", prefix=prefix, interval=SEND_INTERVAL, drain_s=45, pairs=[
        {"tag": "to1", "from": d.client_url("dept-2"), "to": d.client_url("dept-1")},
        {"tag": "from1", "from": d.client_url("dept-1"), "to": d.client_url("dept-2")},
    ])
    numbered.expect("sending", 60)
    cut_at = time.monotonic()
    d.network.cut("dept-1")
    try:
        during = d.wait_health("dept-1", 503, 15)  # seen on dept-1 itself: the link is gone
        time.sleep(max(0.0, cut_at + CUT_S - time.monotonic()))  # the cut's length is under test
    finally:
        d.network.restore("dept-1")
    restored_at = time.monotonic()
    d.wait_health("dept-1", 200, 60)
    recovered_s = time.monotonic() - restored_at
    numbered.tell("stop")
    reports = {r["tag"]: r for r in (numbered.expect("numbered", 120) for _ in range(2))}
    assert numbered.finish(30) == 0, numbered.log_tail()
    for report in reports.values():
        check_numbered(report)
    sent_during_cut = CUT_S / SEND_INTERVAL
    assert all(r["sent"] > sent_during_cut for r in reports.values()), {t: r["sent"] for t, r in reports.items()}
    print(f"\nmulti-host: tls={d.tls} setup {d.timings} flows+operator {flows_s:.1f}s, "
          f"/healthz during the cut {during['status']} {during['checks']}, recovered {recovered_s:.1f}s after "
          f"the restore; numbered: " + ", ".join(
              f"{t} sent {r['sent']} acked {len(r['acks'])} errors {[e.get('error') for e in r['errors']]} "
              f"frames {len(r['frames'])}" for t, r in reports.items()) + f"\nvim-cluster nodes:\n{nodes.stdout}")


LONG_CUT_S = 15.0  # past the node lock's 10 s TTL: the cluster declares the node dead
LONG_CUT_EVENTS: dict[str, dict[str, tuple[str, ...]]] = {  # what each side logs: the node cut off, and a node that saw it go
    # `lease_lapsed`, not `lease_retaken`: the beat that re-took the lock may be one sent into the
    # cut whose answer never came (node/heartbeat.py); in about 1 run of 4 the master's was.
    "dept-1": {"dept-1": ("lease_lapsed", "routes_republished", "catch_up_done"),
               "master": ("dead_node_routes_purged", "forward_peer_dropped", "catch_up_asked_of_all")},
    "master": {"master": ("master_relay_deadline", "relaying_stopped", "master_lease_retaken", "lease_lapsed",
                          "routes_republished"),
               "dept-2": ("forward_link_lost", "catch_up_done")},  # and it follows the new epoch (below)
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("host", ["dept-1", "master"])
def test_a_node_cut_off_past_its_lease_is_declared_dead_and_comes_back_losing_nothing(
    deployment: Deployment, host: str,
) -> None:
    """`host`'s cable pulled for LONG_CUT_S (cut from Redis, the stores, the other nodes and
    its clients) under numbered traffic to and from it, and (the master cut) between the
    departments: `nodes` on dept-2's host shows it DEAD after about 10 s (the master as the
    master, its lease LAPSED, never as a standby); a department is dropped by the master (routes
    purged, every node asked to catch up); the master stops relaying at its deadline. Restored,
    it re-takes its leases (the master with a new epoch), republishes its routes, links again and
    catches up: nothing acked is lost, each sender's order holds, the clients stay connected."""
    d = deployment
    prefix = f"lc{secrets.token_hex(3)}"
    config = str(d.configs["dept-2"])
    pairs = [{"tag": "to", "from": d.client_url("dept-2"), "to": d.client_url(host)},
             {"tag": "from", "from": d.client_url(host), "to": d.client_url("dept-2")}]
    if host == "master":
        pairs.append({"tag": "across", "from": d.client_url("dept-1"), "to": d.client_url("dept-2")})
    numbered = d.agent("clients", "numbered", prefix=prefix, interval=SEND_INTERVAL, drain_s=45, pairs=pairs)
    numbered.expect("sending", 60)
    cut_at = time.monotonic()
    d.network.cut(host)
    shown: list[tuple[float, str, str]] = []  # (seconds into the cut, ROLE, ALIVE) as `nodes` shows `host`
    try:
        while time.monotonic() < cut_at + LONG_CUT_S:  # the cut's length is under test
            row = table(d.cli("dept-2", "nodes", "--config", config).stdout)[host]
            shown.append((time.monotonic() - cut_at, row["ROLE"], row["ALIVE"]))
            time.sleep(0.3)
    finally:
        d.network.restore(host)
    for node in NODES if host == "master" else [host]:  # the departments lost their master link too
        d.wait_health(node, 200, 30)
    back = table(d.cli("dept-2", "nodes", "--config", config).stdout)
    numbered.tell("stop")
    reports = [numbered.expect("numbered", 120) for _ in pairs]
    assert numbered.finish(30) == 0, numbered.log_tail()
    for report in reports:
        check_numbered(report)
    dead = [at for at, _, alive in shown if alive == "DEAD"]
    assert dead and 8.0 <= dead[0] <= 13.0, shown  # the node lock's 10 s TTL, and the CLI's own time
    assert {role for _, role, _ in shown} == {"slave" if host == "dept-1" else "master"}, shown
    assert {node: row["ALIVE"] for node, row in back.items()} == dict.fromkeys(NODES, "yes"), back
    for node, events in LONG_CUT_EVENTS[host].items():
        # The node lease is re-taken at a heartbeat after the cut (one every 2 s, a Redis call
        # in flight through the cut ends at its socket timeout): traffic may have drained first.
        deadline = time.monotonic() + 10
        while True:
            log = d.nodes[node].log_tail(400)
            missing = [event for event in events if f" {event} " not in log]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert not missing, f"{node} never logged {missing}:\n{log}"
    if host == "master":  # dept-2 linked again at the master's new epoch: told by the master's
        # challenge (forward_epoch_raised) or, if its next try came later, by Redis first
        [retaken] = re.findall(r" master_lease_retaken .* epoch=(\d+)", d.nodes["master"].log_tail(400))[-1:]
        ups = re.findall(r" forward_link_up .* epoch=(\d+)", d.nodes["dept-2"].log_tail(400))
        assert ups and ups[-1] == retaken, (retaken, ups)
