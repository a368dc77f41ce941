"""The node's timings and sizes in one frozen object (`Tunables`), with the rules between them.

Rules:
- Every timing and size the trio shell and the pure core act on is a field here, grouped by
  concern (forward link, node lease, master lease, client connections, stores, presence,
  dashboard), with today's default and one line on what it does. `DEFAULTS` is the default
  object; a node builds its own once from the config (`config.NodeConfig.tunables`) and hands
  it to what needs it (NodeContext, Lease, Mastership, the links, each SendQueue ...).
- Only a few are config keys (`CONFIG_KEYS`, documented in docs/protocol.md §5): the forward
  link's dead-after and queue cap, the master lease's TTL, the shutdown grace and the
  send-queue limits. A
  key that sets one value of a group sets the values tied to it in proportion (`from_keys`:
  the master's renewal and relay deadline follow its TTL, the link's warm-up and routed wait
  its dead-after), so that the defaults' margins hold at every setting.
- `check()` (run at construction) enforces the invariants that the code relies on; a
  violation is one `ConfigError` line naming the config key (or the field) and both values.
  A node with a bad combination does not start, and `vim-cluster check` prints the same line.

Not here, on purpose: wire-contract limits stay module constants where the protocol defines
them (protocol/codec.py MAX_* and MIN_PASSWORD, protocol/forward_connection.py MAX_FRAME and
PRE_AUTH_MAX_FRAME, node/handlers/groups.py MAX_MEMBERS, node/ws_server.py and node/http.py
MAX_REQUEST, ids.py's bit layout, core/auth.py TOKEN_TTL_MS): a peer relies on them, so they
are not a node's choice. Operator tools' own timings (launcher, admin, bench, erasure, export)
and the store drivers' (adapters/) are theirs, as are a few local I/O bounds (ws_open
CLOSE_TIMEOUT, health CHECK_TIMEOUT, dashboard PEER_TIMEOUT, frame_log QUEUE/BATCH, ws_server
RECEIVE_BYTES, metrics buckets, operator session limits).

Pure: no trio, no I/O (core/ and protocol/ import it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from .errors import ConfigError

RELAY_MARGIN_S = 0.5  # core/mastership.py: the master lease outlives the right to relay by at least this

# config key -> field (the keys a node's config may set; docs/protocol.md §5)
CONFIG_KEYS = {
    "vim.cluster.link-dead-after": "link_dead_after_s",
    "vim.cluster.master-lease-ttl": "master_ttl_s",
    "vim.cluster.forward-queue-bytes": "link_queue_bytes",
    "vim.websocket.shutdown-grace": "shutdown_grace_s",
    "vim.websocket.send-queue-frames": "client_queue_frames",
    "vim.websocket.send-queue-bytes": "client_queue_bytes",
}
KEY_OF = {name: key for key, name in CONFIG_KEYS.items()}


@attrs.frozen(kw_only=True)
class Tunables:
    # --- the forward link (node/link.py, node/forward_link.py, node/forward_hub.py) ---------
    link_beat_s: float = 2.0  # an idle link sends a heartbeat this often
    link_ack_delay_s: float = 0.02  # a bare ack waits this long to ride on a batch (but the ack of a SessionOpen goes at once)
    link_dead_after_s: float = 10.0  # a link that hears nothing this long is dropped
    link_max_batch: int = 256  # packets in one forward frame
    link_handshake_timeout_s: float = 10.0  # the forward handshake, either side
    link_open_timeout_s: float = 5.0  # TCP connect + WebSocket upgrade to the master
    link_leave_s: float = 3.0  # a stopping slave waits this long at most to tell the master it leaves
    link_stable_s: float = 5.0  # a link up this long starts the reconnect backoff over
    link_routed_wait_s: float = 10.0  # a new session's replay waits this long for the master's routing ack
    link_warmup_s: float = 7.0  # a started master holds slaves' packets until all linked, at most this
    link_warmup_retry_s: float = 0.5  # the warm-up asks Redis again after this when it did not answer
    link_queue_bytes: int = 16 * 1024 * 1024  # client frames a slave holds for the master (more: dropped, caught up)
    # --- the node lease (core/lease.py, node/heartbeat.py) ----------------------------------
    lease_ttl_s: int = 10  # TTL of the node lock, worker id and registration in Redis
    lease_hold_s: float = 8.0  # (H) a confirmation lets the holder mint this long
    lease_settle_s: float = 8.5  # (F) a generation's age before a fresh worker take mints
    lease_heartbeat_s: float = 2.0  # the lease is renewed this often
    # --- the master lease (core/mastership.py, node/mastership.py, node/master_finder.py) ---
    master_ttl_s: float = 4.0  # the master lease's TTL in Redis
    master_renew_s: float = 0.8  # the active master renews it this often
    master_relay_s: float = 3.0  # the master relays until this long after its last confirmed renewal was sent
    master_claim_poll_s: float = 0.25  # a standby tries to take the lease this often
    master_follow_s: float = 0.25  # a linked node checks Redis for a newer master this often
    master_retake_grace_s: float = 1.6  # after Redis is back, a standby leaves a missing lease to its master this long
    # --- client connections (protocol/session.py, node/connection.py, send_queue.py, serve.py, app.py)
    client_handshake_timeout_s: float = 10.0  # a client's HTTP upgrade must be complete by then
    client_close_timeout_s: float = 5.0  # a client's WebSocket closing handshake gets this long
    client_auth_timeout_s: float = 10.0  # a connection not authenticated by then is closed (4003)
    client_ack_window: int = 256  # a connection's messages and confirms waiting for their commit (then its reader waits)
    client_queue_frames: int = 1024  # frames waiting in a connection's SendQueue (more: a slow consumer, 4004)
    client_queue_bytes: int = 4 * 1024 * 1024  # bytes of frames waiting in it (more: a slow consumer, 4004)
    client_linger_s: float = 1.0  # an idle SendQueue writer waits this long for the next frame
    client_close_grace_s: float = 5.0  # a closing connection's close frame gets this long
    client_send_bytes: int = 256 * 1024  # one socket write carries about this much at most
    shutdown_grace_s: float = 3.0  # a stopping node gives its sessions this long to close (1001)
    # --- stores (node/store_writer.py, offline_replay.py, catch_up.py, retention.py) --------
    store_batch: int = 512  # messages and confirms in one group commit
    store_inline_max_s: float = 0.02  # group commits on the event loop average more: they go to a thread
    store_inline_pause_s: float = 30.0  # ... for this long, then the loop tries again
    store_checkpoint_s: float = 0.05  # the store's checkpoint (a worker thread) comes this long after a commit
    store_finish_retry_s: float = 1.0  # finishing a failed commit's saves, refused, is tried again after this (doubling)
    store_unfinished_max: int = 10_000  # saves of failed commits kept to finish; the oldest beyond are dropped
    replay_page: int = 500  # messages read per page of an offline replay or catch-up
    catch_up_margin_ms: int = 60_000  # a catch-up re-delivers from this long before the link went down
    catch_up_retry_s: float = 1.0  # a failed catch-up is tried again after this (doubling) while linked
    retention_lock_ttl_s: int = 60  # TTL of the purge duty's lock in Redis
    retention_check_s: float = 60.0  # the purge checks whether it is due this often
    # --- presence (core/presence.py) ---------------------------------------------------------
    presence_window_s: float = 0.5  # the master announces presence changes at most this often
    presence_chunk: int = 500  # changes in one presence frame
    # --- dashboard (node/stats.py) -------------------------------------------------------------
    stats_sample_s: float = 2.0  # a dashboard sample this often
    stats_samples: int = 90  # samples kept (three minutes)
    stats_latency_window_s: float = 30.0  # relay latency percentiles over this window
    stats_latency_keep: int = 8192  # latencies kept for them at most

    def __attrs_post_init__(self) -> None:
        self.check()

    def check(self, file: str = "tunables") -> None:
        """Raises ConfigError (one line, both values) for the first value or rule broken."""
        for field in attrs.fields(type(self)):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(file, _where(field.name), f"must be a positive number, got {value!r}")
            if field.type in ("int", int) and not isinstance(value, int):
                raise ConfigError(file, _where(field.name), f"must be an integer, got {value!r}")
        for rule in RULES:
            left, right = getattr(self, rule.left), getattr(self, rule.right)
            if not rule.holds(left, right):
                key = _where(rule.left) if rule.left in KEY_OF or rule.right not in KEY_OF else _where(rule.right)
                raise ConfigError(file, key, f"{_name(rule.left)} ({left:g}) {rule.relation} "
                                             f"{_name(rule.right)} ({right:g}): {rule.why}")

    @classmethod
    def from_keys(cls, keys: dict[str, Any], base: Tunables | None = None) -> Tunables:
        """The tunables a config sets (`keys`: config key -> value, None or absent: default).
        A master-lease-ttl sets the renewal (1/5 of it) and the relay deadline (3/4 of it); a
        link-dead-after sets the master's warm-up (7/10 of it) and the routed wait (equal)."""
        base = base or DEFAULTS
        given = {CONFIG_KEYS[k]: v for k, v in keys.items() if v is not None}
        if "master_ttl_s" in given:
            ttl = given["master_ttl_s"]
            given.setdefault("master_renew_s", ttl / 5)
            given.setdefault("master_relay_s", ttl * 3 / 4)
            given.setdefault("master_retake_grace_s", 2 * given["master_renew_s"])
        if "link_dead_after_s" in given:
            dead = given["link_dead_after_s"]
            given.setdefault("link_warmup_s", dead * 7 / 10)
            given.setdefault("link_routed_wait_s", dead)
        return attrs.evolve(base, **given)


def _where(name: str) -> str:
    """The config key of a field, or `tunables.FIELD` for one that is not a config key."""
    return KEY_OF.get(name, f"tunables.{name}")


def _name(name: str) -> str:
    return KEY_OF.get(name, name)


@attrs.frozen
class Rule:
    left: str
    relation: str  # as the message says it
    right: str
    holds: Callable[[float, float], bool]
    why: str


def _below(why: str) -> Callable[[str, str], Rule]:
    return lambda left, right: Rule(left, "must be below", right, lambda a, b: a < b, why)


RULES = (
    _below("a link that beats must never look silent")("link_beat_s", "link_dead_after_s"),
    _below("a slave held during the master's warm-up must not give up on its link (forward_hub.py)")(
        "link_warmup_s", "link_dead_after_s"),
    Rule("link_warmup_s", "must not exceed", "link_routed_wait_s", lambda a, b: a <= b,
         "a new session's replay waits for a master that is warming up (forward_link.py)"),
    _below("(H) the key must outlive its holder's right to mint (core/lease.py)")("lease_hold_s", "lease_ttl_s"),
    _below("(F) a fresh take waits until every earlier holder's right has lapsed (core/lease.py)")(
        "lease_hold_s", "lease_settle_s"),
    _below("the lease must be renewed before its holder's right to mint lapses (core/lease.py)")(
        "lease_heartbeat_s", "lease_hold_s"),
    Rule("master_relay_s", f"plus {RELAY_MARGIN_S:g} s must not exceed", "master_ttl_s",
         lambda a, b: a + RELAY_MARGIN_S <= b,
         "the lease outlives the right to relay by a margin, so two masters never relay at once (core/mastership.py)"),
    Rule("master_renew_s", "times 2 must be below", "master_relay_s", lambda a, b: 2 * a < b,
         "a master keeps relaying through one lost renewal (core/mastership.py)"),
    _below("the active master retakes a lease Redis lost before a standby claims it (node/mastership.py)")(
        "master_claim_poll_s", "master_retake_grace_s"),
)

DEFAULTS = Tunables()
