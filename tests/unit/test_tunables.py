"""Tunables (vim_cluster/tunables.py): the defaults pass their own rules, each rule refuses a
bad combination with one line naming both values, and the few config keys are parsed, derived
and checked at load (so `vim-cluster check` prints the same line)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import attrs
import pytest

from vim_cluster.cli import cmd_check
from vim_cluster.config import load_config
from vim_cluster.errors import ConfigError
from vim_cluster.tunables import CONFIG_KEYS, DEFAULTS, RULES, Tunables

from ..support import write_config


def test_the_defaults_pass_and_are_todays_values() -> None:
    assert Tunables() == DEFAULTS
    DEFAULTS.check()
    assert (DEFAULTS.link_beat_s, DEFAULTS.link_dead_after_s, DEFAULTS.link_warmup_s) == (2.0, 10.0, 7.0)
    assert (DEFAULTS.master_ttl_s, DEFAULTS.master_renew_s, DEFAULTS.master_relay_s) == (4.0, 0.8, 3.0)
    assert DEFAULTS.master_retake_grace_s == 2 * DEFAULTS.master_renew_s
    assert (DEFAULTS.lease_ttl_s, DEFAULTS.lease_hold_s, DEFAULTS.lease_settle_s) == (10, 8.0, 8.5)
    assert (DEFAULTS.client_queue_frames, DEFAULTS.client_queue_bytes) == (1024, 4 * 1024 * 1024)
    assert (DEFAULTS.client_auth_timeout_s, DEFAULTS.shutdown_grace_s) == (10.0, 3.0)


@pytest.mark.parametrize(("change", "key", "message"), [
    ({"link_beat_s": 10.0}, "vim.cluster.link-dead-after",
     "link_beat_s (10) must be below vim.cluster.link-dead-after (10): a link that beats must never look silent"),
    ({"link_warmup_s": 10.0}, "vim.cluster.link-dead-after",
     "link_warmup_s (10) must be below vim.cluster.link-dead-after (10): a slave held during"),
    ({"link_routed_wait_s": 6.0}, "tunables.link_warmup_s",
     "link_warmup_s (7) must not exceed link_routed_wait_s (6)"),
    ({"lease_hold_s": 10.0, "lease_settle_s": 10.5}, "tunables.lease_hold_s",
     "lease_hold_s (10) must be below lease_ttl_s (10): (H)"),
    ({"lease_settle_s": 8.0}, "tunables.lease_hold_s", "lease_hold_s (8) must be below lease_settle_s (8): (F)"),
    ({"lease_heartbeat_s": 8.0}, "tunables.lease_heartbeat_s",
     "lease_heartbeat_s (8) must be below lease_hold_s (8)"),
    ({"master_relay_s": 3.6}, "vim.cluster.master-lease-ttl",
     "master_relay_s (3.6) plus 0.5 s must not exceed vim.cluster.master-lease-ttl (4): the lease outlives"),
    ({"master_renew_s": 1.5}, "tunables.master_renew_s",
     "master_renew_s (1.5) times 2 must be below master_relay_s (3): a master keeps relaying"),
    ({"master_claim_poll_s": 1.6}, "tunables.master_claim_poll_s",
     "master_claim_poll_s (1.6) must be below master_retake_grace_s (1.6)"),
])
def test_each_rule_refuses_a_bad_combination_naming_both_values(change: dict[str, Any], key: str,
                                                                 message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        attrs.evolve(DEFAULTS, **change)
    assert caught.value.key == key
    assert caught.value.problem.startswith(message)
    assert "\n" not in str(caught.value)


def test_every_rule_is_exercised_above() -> None:
    """A new rule needs its own case in the test above (this counts them)."""
    assert len(RULES) == 9


@pytest.mark.parametrize(("change", "key", "problem"), [
    ({"shutdown_grace_s": -1.0}, "vim.websocket.shutdown-grace", "must be a positive number, got -1.0"),
    ({"link_beat_s": 0}, "tunables.link_beat_s", "must be a positive number, got 0"),
    ({"client_ack_window": 2.5}, "tunables.client_ack_window", "must be an integer, got 2.5"),
    ({"stats_samples": True}, "tunables.stats_samples", "must be a positive number, got True"),
])
def test_a_value_that_is_not_positive_or_not_an_integer_is_refused(change: dict[str, Any], key: str,
                                                                  problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        attrs.evolve(DEFAULTS, **change)
    assert (caught.value.key, caught.value.problem) == (key, problem)


def _config(tmp_path: Path, cluster: dict[str, Any] | None = None, websocket: dict[str, Any] | None = None) -> Path:
    return write_config(tmp_path, redis_url="embedded", websocket=websocket,
                        extra={"cluster": cluster or {}})


def test_without_the_keys_a_config_has_the_defaults(tmp_path: Path) -> None:
    assert load_config(_config(tmp_path)).tunables == DEFAULTS


def test_the_config_keys_are_parsed_and_the_values_tied_to_them_follow(tmp_path: Path) -> None:
    config = load_config(_config(
        tmp_path, cluster={"link-dead-after": 20, "master-lease-ttl": 8, "forward-queue-bytes": 65536},
        websocket={"shutdown-grace": 0.5, "send-queue-frames": 64, "send-queue-bytes": 65536}))
    t = config.tunables
    assert (t.link_dead_after_s, t.link_warmup_s, t.link_routed_wait_s) == (20.0, 14.0, 20.0)
    assert (t.master_ttl_s, t.master_renew_s, t.master_relay_s, t.master_retake_grace_s) == (8.0, 1.6, 6.0, 3.2)
    assert (t.shutdown_grace_s, t.client_queue_frames, t.client_queue_bytes) == (0.5, 64, 65536)
    assert t.link_queue_bytes == 65536
    assert t.link_beat_s == DEFAULTS.link_beat_s and t.lease_ttl_s == DEFAULTS.lease_ttl_s  # the others stay
    assert set(CONFIG_KEYS) == {"vim.cluster.link-dead-after", "vim.cluster.master-lease-ttl",
                                "vim.cluster.forward-queue-bytes",
                                "vim.websocket.shutdown-grace", "vim.websocket.send-queue-frames",
                                "vim.websocket.send-queue-bytes"}


@pytest.mark.parametrize(("cluster", "websocket", "line"), [
    ({"link-dead-after": -3}, {}, "vim.cluster.link-dead-after: must be a positive number, got -3"),
    ({"link-dead-after": 2}, {},
     "vim.cluster.link-dead-after: link_beat_s (2) must be below vim.cluster.link-dead-after (2)"),
    ({"master-lease-ttl": 1.5}, {}, "vim.cluster.master-lease-ttl: master_relay_s (1.125) plus 0.5 s must not "
                                    "exceed vim.cluster.master-lease-ttl (1.5)"),
    ({}, {"send-queue-frames": 0}, "vim.websocket.send-queue-frames: must be an integer from 1 to 10000000, got 0"),
    ({}, {"send-queue-bytes": "4M"}, "vim.websocket.send-queue-bytes: must be an integer from 1024 to"),
    ({}, {"shutdown-grace": "soon"}, "vim.websocket.shutdown-grace: must be a positive number, got 'soon'"),
    ({"beat": 1}, {}, "vim.cluster.beat: unknown key"),
])
def test_a_bad_key_or_combination_stops_the_config_with_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], cluster: dict[str, Any], websocket: dict[str, Any],
        line: str) -> None:
    path = _config(tmp_path, cluster, websocket)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: {line}")
    with pytest.raises(SystemExit) as exited:
        cmd_check(argparse.Namespace(config=str(path)))  # `vim-cluster check` prints the same line
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vim-cluster: config error: {path}: {line}") and err.count("\n") == 1
