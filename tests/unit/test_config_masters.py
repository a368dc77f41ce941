"""Standby masters in the config: master-url candidates (a list or comma-separated) and the
published forward-url; and how `vim-cluster nodes` tells the roles apart."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from vim_cluster.admin import master_summary, nodes_table
from vim_cluster.config import load_config
from vim_cluster.core.mastership import MasterView
from vim_cluster.ports import NodeInfo

from .test_config import config, config_error, write

A, B = "ws://10.0.0.1:8081/forward", "wss://master-b.example:8081/forward"


@pytest.mark.parametrize("given", [[A, B], f"{A}, {B}", f"{A},{B},{A}"])
def test_master_url_takes_a_list_or_comma_separated_candidates(tmp_path: Path, given: object) -> None:
    loaded = load_config(write(tmp_path, config(cluster={"node-type": "slave", "master-url": given})))
    assert loaded.cluster.master_urls == (A, B) and loaded.cluster.master_url == A


@pytest.mark.parametrize("given", [[], [A, "http://x:1/"], "ws://nohost", [1]])
def test_bad_master_url_candidates_name_the_key(tmp_path: Path, given: object) -> None:
    error = config_error(write(tmp_path, config(cluster={"node-type": "slave", "master-url": given})))
    assert error.key == "vim.cluster.master-url"


def test_a_master_may_list_candidates_and_set_the_url_it_publishes(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, config(cluster={"master-url": [B], "forward-url": A})))
    assert loaded.is_master and loaded.cluster.master_urls == (B,) and loaded.cluster.forward_url == A
    assert config_error(write(tmp_path, config(cluster={"forward-url": "http://x/"}))).key == "vim.cluster.forward-url"


def node(node_id: str, role: str, alive: bool = True) -> NodeInfo:
    return NodeInfo(node_id, role, f"ws://{node_id}:1/", None, None, 1, "t", 0, 0, 9_000, alive=alive)


def test_nodes_shows_the_lease_holder_as_master_and_the_other_masters_as_standbys() -> None:
    nodes = [node("a", "master", alive=False), node("b", "standby"), node("c", "master"), node("d", "slave")]
    view = MasterView("b", "ws://b:8081/forward", 7, 0, 3, True)
    table = nodes_table(nodes, 10_000, view).splitlines()
    roles = {line.split()[0]: line.split()[1] for line in table[1:]}
    assert roles == {"a": "standby", "b": "master", "c": "standby", "d": "slave"}
    summary = master_summary(view, nodes, 10_000)
    assert summary.splitlines() == [
        "active master: b, epoch 7, forward ws://b:8081/forward",
        "standbys: c",
        "takeovers: 3 (the first start included), the last 1970-01-01 00:00:00 UTC (10.0s ago)",
    ]
    lapsed = master_summary(MasterView("b", "ws://b:8081/forward", 7, 0, 3, False), nodes, 10_000)
    assert "active master: b (its lease LAPSED: a standby takes over), epoch 7" in lapsed
    alone = master_summary(MasterView("b", "ws://b:8081/forward", 7, 0, 3, False), [nodes[0], nodes[3]], 10_000)
    assert alone.splitlines()[:2] == [  # b stopped; a, the other master-capable node, is dead
        "active master: b (its lease LAPSED and no standby is alive: start a master-capable node), epoch 7, "
        "forward ws://b:8081/forward", "standbys: none"]
    assert master_summary(None, nodes, 0).startswith("active master: none")
    drained = [attrs.evolve(nodes[3], draining=True), attrs.evolve(nodes[0], draining=True), nodes[1]]
    assert master_summary(view, drained, 10_000).splitlines()[-1] == "draining: d (no new client connections)"
    assert master_summary(None, drained, 0).splitlines()[-1] == "draining: d (no new client connections)"


def test_a_master_whose_lease_lapsed_is_shown_as_the_master_not_as_its_own_standby() -> None:
    """A lone master hung (or cut off from Redis) past its lease but not yet past its node lock:
    it is still alive in Redis, and no standby exists to take over."""
    nodes = [node("m", "master"), node("d", "slave")]
    view = MasterView("m", "ws://m:8081/forward", 1, 0, 1, False)
    roles = {line.split()[0]: line.split()[1] for line in nodes_table(nodes, 10_000, view).splitlines()[1:]}
    assert roles == {"m": "master", "d": "slave"}
    assert master_summary(view, nodes, 10_000).splitlines()[:2] == [
        "active master: m (its lease LAPSED and no standby is alive: start a master-capable node), epoch 1, "
        "forward ws://m:8081/forward", "standbys: none"]
