"""The Registry ports (`ports.NodeLeases`, `MasterLock`, `UserRoutes`, `LoginFailures`) on Redis,
in one adapter. Every key name the project uses is in `Keys`.

Rules:
- A node is alive while its lock key `vim:node-lock:{id}` exists; the lock has a TTL that the
  node's heartbeat renews, so a crashed node is dead within one TTL.
- Node descriptions (`vim:nodes`, a hash) outlive the lock, so operators see dead nodes too.
- Routes are one hash per user, one field per session: a late close of an old session deletes
  only its own field (compare-and-delete by session id), never a newer session's route.
- Every lock change is compare-and-set by owner token (Lua), so a process that lost its lock
  cannot delete or renew another's.
- A heartbeat re-takes a key that is simply missing (Redis lost its data) and reports a key
  held by another owner; `core.lease` decides what either means.
- The generation marker `vim:generation` ("token run_id born_ms") is checked by every worker
  take and heartbeat, in the same script: missing or naming another server run_id, it is made
  anew (see core/lease.py for why worker ids need it).
- `vim.redis.url` may name Sentinels (redis_url.py: `redis+sentinel://HOST:PORT[,...]/SERVICE[/DB]`);
  the client asks them for the primary and follows it after a failover.
- Connection failures become StoreUnavailable here, once.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import attrs
import redis
import redis.exceptions
import redis.sentinel
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..config_values import redact
from ..core.lease import BeatReport, Generation, KeyState
from ..core.mastership import MasterView, Renewal
from ..errors import StoreUnavailable
from ..ids import MAX_WORKER
from ..model import UserId
from ..ports import NodeInfo, Route
from ..redis_url import parse_sentinel_url
from ..tunables import DEFAULTS


class Keys:
    NODES = "vim:nodes"  # hash node_id -> NodeInfo JSON

    @staticmethod
    def node_lock(node_id: str) -> str:
        return f"vim:node-lock:{node_id}"

    @staticmethod
    def node_draining(node_id: str) -> str:
        """Set (with the lock's TTL, renewed by the heartbeats) while the node drains. Not a
        field of the registration: nodes and tools older than it refuse a field they do not
        know, and would fail to list the nodes during a rolling upgrade. It holds the lock's
        owner: it counts only while that owner holds the lock (a node of an older release,
        which does not delete it, may start under the id before it lapses)."""
        return f"vim:node-draining:{node_id}"

    @staticmethod
    def node_sessions(node_id: str) -> str:
        return f"vim:node-sessions:{node_id}"  # set of "user_id:session_id"

    @staticmethod
    def worker(worker: int) -> str:
        return f"{Keys.WORKER_PREFIX}{worker}"

    @staticmethod
    def routes(user_id: int) -> str:
        return f"vim:routes:{user_id}"  # hash session_id -> Route JSON

    # Login lockout counters (core.lockout): `username` is the normalised username key,
    # `address` the client's source key (an IPv4 address or an IPv6 /64).
    @staticmethod
    def login_failures(username: str) -> str:
        return f"vim:login-fail:user:{username}"

    @staticmethod
    def login_failures_pair(username: str, address: str) -> str:
        return f"vim:login-fail:pair:{address}|{username}"

    @staticmethod
    def login_failures_address(address: str) -> str:
        return f"vim:login-fail:addr:{address}"

    @staticmethod
    def registrations_address(address: str) -> str:
        return f"vim:register:addr:{address}"

    MASTER_LOCK = "vim:master-lock"  # "node_id owner", PX MASTER_TTL_S: the active master's lease
    MASTER_EPOCH = "vim:master-epoch"  # the fencing epoch: INCR on every takeover
    MASTER = "vim:master"  # hash: node, url, epoch, since (ms), takeovers: the last claim, for everyone
    GENERATION = "vim:generation"  # "token run_id born_ms": see core/lease.py
    WORKER_PREFIX = "vim:worker:"

    @staticmethod
    def duty_lock(duty: str) -> str:
        return f"vim:duty-lock:{duty}"  # one node of the cluster runs the duty (e.g. the purge)

    @staticmethod
    def duty_done(duty: str) -> str:
        return f"vim:duty-done:{duty}"  # the stamp (e.g. the UTC day) of the last finished run


# KEYS[1] = lock; ARGV = value, ttl, replacing. Take the lock if it is free or holds exactly
# `replacing` (the owner token of a process known to be dead).
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if (not current) or current == ARGV[1] or (ARGV[3] ~= '' and current == ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""
# KEYS[1] = lock; ARGV = owner. Delete only if we own it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# The generation check every worker take and heartbeat starts with (KEYS[1] = the marker,
# ARGV[1] = a token for a new one). Returns {token, age in ms by the server's clock}.
_GENERATION = """
local function generation(new_token)
  local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local raw = redis.call('GET', KEYS[1])
  if raw then
    local token, rid, born = string.match(raw, '^(%S+) (%S+) (%d+)$')
    if rid == run_id then return {token, now_ms - tonumber(born)} end
  end
  redis.call('SET', KEYS[1], new_token .. ' ' .. run_id .. ' ' .. now_ms)
  return {new_token, 0}
end
local function hold(key, value, ttl)
  local current = redis.call('GET', key)
  if current == value then
    redis.call('EXPIRE', key, ttl)
    return 'renewed'
  end
  if not current then
    redis.call('SET', key, value, 'EX', ttl)
    return 'retaken'
  end
  return 'other'
end
"""
# KEYS = marker, node lock, master lock, worker key; ARGV = new token, owner, ttl,
# master value ('' = not a master), worker ('' = none). Returns {token, age, node, master, worker}.
_BEAT = _GENERATION + """
local gen = generation(ARGV[1])
local node = hold(KEYS[2], ARGV[2], ARGV[3])
local master, worker = 'absent', 'absent'
if ARGV[4] ~= '' then master = hold(KEYS[3], ARGV[4], ARGV[3]) end
if ARGV[5] ~= '' then worker = hold(KEYS[4], ARGV[2], ARGV[3]) end
return {gen[1], gen[2], node, master, worker}
"""
# KEYS = marker; ARGV = new token, owner, ttl, first worker to try, key prefix, how many.
# Takes the first free worker id from `first` on. Returns {token, age, worker or -1}.
_TAKE_WORKER = _GENERATION + """
local gen = generation(ARGV[1])
local count = tonumber(ARGV[6])
for offset = 0, count - 1 do
  local worker = (tonumber(ARGV[4]) + offset) % count
  if redis.call('SET', ARGV[5] .. worker, ARGV[2], 'NX', 'EX', ARGV[3]) then
    return {gen[1], gen[2], worker}
  end
end
return {gen[1], gen[2], -1}
"""
# KEYS = master lock, epoch counter, master hash; ARGV = lock value, ttl ms, floor epoch, node,
# forward URL, replacing. Takes the master lease only if no one holds it (a holder's lease must
# lapse first), it holds exactly `replacing` (this node's own process, known dead) or the
# claimer itself does (a claim of its own whose answer never came: sent into a network cut and
# delivered by TCP once it healed, after the socket timed out), raises the epoch above both the counter and `floor` (the highest epoch the claimer
# saw: a Redis that lost its data must not hand out an old epoch again) and publishes the
# master. Returns {1, epoch} or {0, 0}.
_CLAIM_MASTER = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] and (ARGV[6] == '' or current ~= ARGV[6]) then return {0, 0} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local epoch = redis.call('INCR', KEYS[2])
if epoch <= tonumber(ARGV[3]) then
  epoch = tonumber(ARGV[3]) + 1
  redis.call('SET', KEYS[2], epoch)
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[3], 'node', ARGV[4], 'url', ARGV[5], 'epoch', epoch, 'since', now_ms)
redis.call('HINCRBY', KEYS[3], 'takeovers', 1)
return {1, epoch}
"""
# KEYS = master lock, master hash; ARGV = lock value, ttl ms, epoch. Renews our lease if it is
# still ours and still names our epoch: 'renewed', 'missing' (it lapsed, or Redis lost it) or 'other'.
_RENEW_MASTER = """
local current = redis.call('GET', KEYS[1])
if not current then return 'missing' end
if current ~= ARGV[1] or redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[3] then return 'other' end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 'renewed'
"""
# KEYS[1] = routes hash, KEYS[2..] unused; ARGV = session id, user id. Deletes the route
# and its entry in the node's session set.
_REMOVE_ROUTE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local node = cjson.decode(raw)['node_id']
redis.call('SREM', 'vim:node-sessions:' .. node, ARGV[2] .. ':' .. ARGV[1])
return 1
"""
# KEYS = users' routes hashes. For each user with routes: its index in KEYS (from 0) and a node
# its routes are on, as a flat list of pairs (a node once per user): the caller reads nothing
# else, and checks the nodes' liveness itself (a handful of nodes, not a key per user).
_ROUTE_NODES = """
local found = {}
for i, key in ipairs(KEYS) do
  local seen = {}
  for _, raw in ipairs(redis.call('HVALS', key)) do
    local node = cjson.decode(raw)['node_id']
    if not seen[node] then
      seen[node] = true
      found[#found + 1] = i - 1
      found[#found + 1] = node
    end
  end
end
return found
"""
ONLINE_CHUNK = 500  # users per _ROUTE_NODES call: Redis runs a script alone, so a few ms at most
# KEYS = the pair's, the username's and the address's failure counters; ARGV = window, then
# the three limits. One atomic step: refuse (return which counter, 1..3, is at its limit) or
# count the attempt in all three (a counter's window starts with its first attempt) and
# return 0. Parallel attempts are counted one by one, so no more than the limits pass.
_RESERVE_LOGIN = """
for i = 1, 3 do
  if tonumber(redis.call('GET', KEYS[i]) or '0') >= tonumber(ARGV[i + 1]) then return i end
end
for i = 1, 3 do
  if redis.call('INCR', KEYS[i]) == 1 then redis.call('EXPIRE', KEYS[i], ARGV[1]) end
end
return 0
"""
# KEYS = the same three counters. A reserved attempt was right: forget the pair's failures,
# give the username and the address their attempt back (never below zero).
_REFUND_LOGIN = """
redis.call('DEL', KEYS[1])
for i = 2, 3 do
  local n = tonumber(redis.call('GET', KEYS[i]) or '0')
  if n > 0 then redis.call('DECR', KEYS[i]) end
end
return 0
"""


# KEYS[1] = an address's registrations; ARGV = window_s, limit. 1 (nothing counted) at the limit.
_RESERVE_REGISTER = """
if tonumber(redis.call('GET', KEYS[1]) or '0') >= tonumber(ARGV[2]) then return 1 end
if redis.call('INCR', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return 0
"""


def _login_keys(username: str, address: str) -> list[str]:
    return [Keys.login_failures_pair(username, address), Keys.login_failures(username),
            Keys.login_failures_address(address)]


def _info_json(info: NodeInfo) -> str:
    """The registration, without `alive` and `draining` (kept in keys of their own)."""
    fields = attrs.asdict(info)
    del fields["alive"], fields["draining"]
    return json.dumps(fields)


NODE_INFO_FIELDS = frozenset(field.name for field in attrs.fields(NodeInfo))


def _info(raw: str | bytes, alive: bool, draining: bool) -> NodeInfo:
    """A registration; fields a newer node wrote that this one does not know are left out."""
    fields = {key: value for key, value in json.loads(raw).items() if key in NODE_INFO_FIELDS}
    fields["alive"], fields["draining"] = alive, draining
    return NodeInfo(**fields)


def connect(url: str) -> redis.Redis:
    """A client for a redis://, rediss://, unix:// or redis+sentinel:// URL (not connected yet)."""
    # A connection refused or reset (a restart, a failover) is retried twice at once; a
    # timeout is not (a hung server would hold the caller three times as long).
    retry = Retry(ExponentialBackoff(cap=0.2, base=0.02), 2, supported_errors=(redis.exceptions.ConnectionError,))
    options: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 5, "decode_responses": True, "retry": retry}
    if not url.startswith("redis+sentinel://"):
        return redis.Redis.from_url(url, **options)
    parsed = parse_sentinel_url(url)
    sentinel = redis.sentinel.Sentinel(list(parsed.sentinels), socket_timeout=2, socket_connect_timeout=2)
    return sentinel.master_for(parsed.service, db=parsed.db, username=parsed.username,
                               password=parsed.password, **options)


def _state(answer: str | bytes) -> KeyState:
    return KeyState(answer.decode() if isinstance(answer, bytes) else answer)


class RedisRegistry:
    def __init__(self, url: str) -> None:
        self.url = url
        self.name = redact(url)  # for messages: never the password
        self._r = connect(url)
        self._release = self._r.register_script(_RELEASE)
        self._claim = self._r.register_script(_CLAIM)
        self._remove_route = self._r.register_script(_REMOVE_ROUTE)
        self._beat = self._r.register_script(_BEAT)
        self._take_worker = self._r.register_script(_TAKE_WORKER)
        self._reserve_login = self._r.register_script(_RESERVE_LOGIN)
        self._refund_login = self._r.register_script(_REFUND_LOGIN)
        self._reserve_register = self._r.register_script(_RESERVE_REGISTER)
        self._claim_master = self._r.register_script(_CLAIM_MASTER)
        self._renew_master = self._r.register_script(_RENEW_MASTER)
        self._route_nodes = self._r.register_script(_ROUTE_NODES)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Redis not serving this node is StoreUnavailable (one line; a node then answers
        `unavailable`, a command exits 3): down, slow, loading, a read-only replica, a wrong
        password, and a server that refuses this client: protected mode (`DENIED`: no password
        set and a client from another host, so a Redis left as packaged refuses every node
        host) or an ACL user without the command (`NOPERM`), which were tracebacks."""
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                redis.exceptions.BusyLoadingError, redis.exceptions.ReadOnlyError,
                redis.exceptions.NoPermissionError) as exc:
            raise StoreUnavailable(f"redis {self.name}: {exc}") from exc
        except redis.exceptions.ResponseError as exc:
            if not str(exc).startswith("DENIED"):
                raise
            raise StoreUnavailable(f"redis {self.name}: {exc}") from exc

    def ping(self) -> None:
        with self._errors():
            self._r.ping()

    def acquire_node(self, info: NodeInfo, owner: str, ttl_s: int, replacing: str | None = None) -> bool:
        with self._errors():
            if not self._claim(keys=[Keys.node_lock(info.node_id)], args=[owner, ttl_s, replacing or ""]):
                return False
            with self._r.pipeline() as pipe:  # a node that starts does not drain
                pipe.hset(Keys.NODES, info.node_id, _info_json(info))
                pipe.delete(Keys.node_draining(info.node_id))
                pipe.execute()
            return True

    def node_owner(self, node_id: str) -> str | None:
        with self._errors():
            value = self._r.get(Keys.node_lock(node_id))
        return str(value) if value else None

    # -- the master lease (core/mastership.py) -----------------------------------------------

    def claim_master(self, node_id: str, owner: str, forward_url: str, ttl_ms: int, floor: int,
                     replacing: str | None = None) -> int | None:
        """Takes the master lease if no one holds it (or `replacing`, a dead owner token of this
        node id, does); returns the new epoch (> floor), or None."""
        old = f"{node_id} {replacing}" if replacing else ""
        with self._errors():
            taken, epoch = self._claim_master(keys=[Keys.MASTER_LOCK, Keys.MASTER_EPOCH, Keys.MASTER],
                                              args=[f"{node_id} {owner}", ttl_ms, floor, node_id, forward_url, old])
        return int(epoch) if int(taken) else None

    def renew_master(self, node_id: str, owner: str, epoch: int, ttl_ms: int) -> Renewal:
        with self._errors():
            answer = self._renew_master(keys=[Keys.MASTER_LOCK, Keys.MASTER], args=[f"{node_id} {owner}", ttl_ms, epoch])
        return Renewal(answer.decode() if isinstance(answer, bytes) else answer)

    def release_master(self, node_id: str, owner: str) -> None:
        """Gives the master lease up (a standby takes over at once); only if it is ours."""
        with self._errors():
            self._release(keys=[Keys.MASTER_LOCK], args=[f"{node_id} {owner}"])

    def active_master(self) -> MasterView | None:
        """The last master that claimed the lease (None if none ever did), `alive` while its
        lease holds."""
        with self._errors():
            pipe = self._r.pipeline(transaction=True)
            pipe.get(Keys.MASTER_LOCK)
            pipe.hgetall(Keys.MASTER)
            lock, fields = pipe.execute()
        if not fields or "node" not in fields:
            return None
        holder, _, owner = str(lock).partition(" ") if lock else ("", "", "")
        return MasterView(node_id=str(fields["node"]), forward_url=str(fields.get("url", "")),
                          epoch=int(fields.get("epoch", 0)), since_ms=int(fields.get("since", 0)),
                          takeovers=int(fields.get("takeovers", 0)), alive=holder == fields["node"],
                          owner=owner if holder == fields["node"] else None)

    def heartbeat(self, info: NodeInfo, owner: str, ttl_s: int, worker: int | None) -> BeatReport:
        master = ""  # the master lease has its own, shorter, renewal (renew_master)
        with self._errors():
            token, age_ms, node, master_state, worker_state = self._beat(
                keys=[Keys.GENERATION, Keys.node_lock(info.node_id), Keys.MASTER_LOCK,
                      Keys.worker(worker if worker is not None else 0)],
                args=[secrets.token_hex(8), owner, ttl_s, master, "" if worker is None else worker],
            )
            report = BeatReport(Generation(str(token), int(age_ms) / 1000), _state(node),
                                _state(master_state), _state(worker_state))
            if report.node is not KeyState.OTHER:
                with self._r.pipeline(transaction=False) as pipe:
                    pipe.hset(Keys.NODES, info.node_id, _info_json(info))
                    if info.draining:
                        pipe.set(Keys.node_draining(info.node_id), owner, ex=ttl_s)
                    pipe.execute()
            return report

    def release_node(self, node_id: str, owner: str, worker: int | None = None) -> None:
        with self._errors():
            if worker is not None:
                self._release(keys=[Keys.worker(worker)], args=[owner])
            self._release(keys=[Keys.MASTER_LOCK], args=[f"{node_id} {owner}"])
            if self._release(keys=[Keys.node_lock(node_id)], args=[owner]):
                self._r.delete(Keys.node_draining(node_id))
                self.purge_routes(node_id)

    def purge_routes(self, node_id: str) -> int:
        """Removes every route of `node_id` (a node that stopped or died). Returns how many."""
        with self._errors():
            members = self._r.smembers(Keys.node_sessions(node_id))
            for member in members:
                user_id, session_id = str(member).split(":", 1)
                self._remove_route(keys=[Keys.routes(int(user_id))], args=[session_id, user_id])
            self._r.delete(Keys.node_sessions(node_id))
            return len(members)

    def lease_worker(self, node_id: str, owner: str, ttl_s: int, prefer: int | None = None) -> tuple[int, Generation]:
        first = prefer if prefer is not None else zlib.crc32(node_id.encode()) % (MAX_WORKER + 1)
        with self._errors():
            token, age_ms, worker = self._take_worker(
                keys=[Keys.GENERATION],
                args=[secrets.token_hex(8), owner, ttl_s, first, Keys.WORKER_PREFIX, MAX_WORKER + 1],
            )
        if int(worker) < 0:
            raise StoreUnavailable("no free worker id: 1024 nodes hold one")
        return int(worker), Generation(str(token), int(age_ms) / 1000)

    def workers(self) -> dict[int, str]:
        """Every worker id held, with its owner token."""
        with self._errors():
            keys = sorted(self._r.scan_iter(match=f"{Keys.WORKER_PREFIX}*", count=1000))
            owners = self._r.mget(keys) if keys else []
        return {int(str(k).removeprefix(Keys.WORKER_PREFIX)): str(o) for k, o in zip(keys, owners, strict=True) if o}

    def flush_as_new(self, settle_s: float = DEFAULTS.lease_settle_s) -> None:
        """Empties this Redis and marks it as one no node has used for a while (a generation
        `settle_s` old: Tunables.lease_settle_s), so fresh worker ids mint at once. Only for a Redis that no running node
        uses (tests, a first setup): it waives the wait that protects ids after a loss."""
        with self._errors():
            self._r.flushall()
            run_id = self._r.info("server")["run_id"]
            seconds, micros = self._r.time()
            born_ms = seconds * 1000 + micros // 1000 - int(settle_s * 1000) - 1000
            self._r.set(Keys.GENERATION, f"{secrets.token_hex(8)} {run_id} {born_ms}")

    def republish_routes(self, routes: Sequence[tuple[UserId, Route]]) -> None:
        """Adds the routes (a node's live sessions after Redis forgot them) in one round trip."""
        with self._errors():
            pipe = self._r.pipeline(transaction=False)
            for user_id, route in routes:
                pipe.hset(Keys.routes(user_id), route.session_id, json.dumps(attrs.asdict(route)))
                pipe.sadd(Keys.node_sessions(route.node_id), f"{user_id}:{route.session_id}")
            pipe.execute()

    def nodes(self) -> list[NodeInfo]:
        with self._errors():
            described = self._r.hgetall(Keys.NODES)
            ids = sorted(str(i) for i in described)
            if not ids:
                return []
            with self._r.pipeline(transaction=False) as pipe:
                pipe.mget([Keys.node_lock(i) for i in ids])
                pipe.mget([Keys.node_draining(i) for i in ids])
                alive, draining = pipe.execute()
        return [_info(described[i], a is not None, d is not None and d == a)
                for i, a, d in zip(ids, alive, draining, strict=True)]

    def forget_node(self, node_id: str) -> None:
        with self._errors():
            self._r.hdel(Keys.NODES, node_id)

    def add_route(self, user_id: UserId, route: Route) -> list[Route]:
        with self._errors():
            pipe = self._r.pipeline(transaction=True)
            pipe.hgetall(Keys.routes(user_id))
            pipe.hset(Keys.routes(user_id), route.session_id, json.dumps(attrs.asdict(route)))
            pipe.sadd(Keys.node_sessions(route.node_id), f"{user_id}:{route.session_id}")
            before = pipe.execute()[0]
            return self._on_live_nodes({user_id: [Route(**json.loads(v)) for v in before.values()]})[user_id]

    def remove_route(self, user_id: UserId, session_id: str) -> None:
        with self._errors():
            self._remove_route(keys=[Keys.routes(user_id)], args=[session_id, str(user_id)])

    def routes(self, user_ids: Iterable[UserId]) -> dict[UserId, list[Route]]:
        users = list(dict.fromkeys(user_ids))
        with self._errors():
            pipe = self._r.pipeline(transaction=False)
            for user in users:
                pipe.hgetall(Keys.routes(user))
            raw = pipe.execute()
            routes = {
                user: [Route(**json.loads(v)) for v in fields.values()]
                for user, fields in zip(users, raw, strict=True)
            }
            return self._on_live_nodes(routes)

    def online(self, user_ids: Iterable[UserId]) -> set[UserId]:
        # A pipeline of HGETALLs (`routes`) cost the node 10 µs of CPU a user, most of it
        # redis-py's; this, 2 µs (5,000 users: 50 -> 10 ms).
        users = list(dict.fromkeys(user_ids))
        on_node: dict[str, list[UserId]] = {}
        with self._errors():
            for start in range(0, len(users), ONLINE_CHUNK):
                chunk = users[start : start + ONLINE_CHUNK]
                found = self._route_nodes(keys=[Keys.routes(u) for u in chunk])
                for i in range(0, len(found), 2):
                    on_node.setdefault(str(found[i + 1]), []).append(chunk[int(found[i])])
            nodes = sorted(on_node)
            alive = self._r.mget([Keys.node_lock(n) for n in nodes]) if nodes else []
        return {user for node, lock in zip(nodes, alive, strict=True) if lock for user in on_node[node]}

    def _on_live_nodes(self, routes: dict[UserId, list[Route]]) -> dict[UserId, list[Route]]:
        nodes = sorted({r.node_id for rs in routes.values() for r in rs})
        alive = dict(zip(nodes, self._r.mget([Keys.node_lock(n) for n in nodes]), strict=True)) if nodes else {}
        return {user: [r for r in rs if alive.get(r.node_id)] for user, rs in routes.items()}

    def reserve_login(self, username: str, address: str, window_s: int, limits: tuple[int, int, int]) -> int:
        with self._errors():
            return int(self._reserve_login(keys=_login_keys(username, address), args=[window_s, *limits]))

    def refund_login(self, username: str, address: str) -> None:
        with self._errors():
            self._refund_login(keys=_login_keys(username, address))

    def reserve_register(self, address: str, window_s: int, limit: int) -> bool:
        with self._errors():
            return not int(self._reserve_register(keys=[Keys.registrations_address(address)], args=[window_s, limit]))

    # -- cluster duties and erasure (lifecycle_ports.DutyLock) ---------------------------------

    def acquire_duty(self, duty: str, owner: str, ttl_s: int) -> bool:
        """Takes the duty's lock if it is free (or already ours); it lapses after ttl_s."""
        with self._errors():
            return bool(self._claim(keys=[Keys.duty_lock(duty)], args=[owner, ttl_s, ""]))

    def renew_duty(self, duty: str, owner: str, ttl_s: int) -> bool:
        """Extends our lock (re-takes it if it lapsed and is free); False if another owns it."""
        with self._errors():
            return bool(self._claim(keys=[Keys.duty_lock(duty)], args=[owner, ttl_s, ""]))

    def release_duty(self, duty: str, owner: str) -> None:
        with self._errors():
            self._release(keys=[Keys.duty_lock(duty)], args=[owner])

    def duty_done(self, duty: str) -> str | None:
        with self._errors():
            value = self._r.get(Keys.duty_done(duty))
        return str(value) if value else None

    def mark_duty_done(self, duty: str, stamp: str) -> None:
        with self._errors():
            self._r.set(Keys.duty_done(duty), stamp)

    def forget_user(self, user_id: UserId) -> int:
        """Removes every route of the user (on any node, live or dead); returns how many."""
        with self._errors():
            sessions = list(self._r.hkeys(Keys.routes(user_id)))
            for session_id in sessions:
                self._remove_route(keys=[Keys.routes(user_id)], args=[session_id, str(user_id)])
            self._r.delete(Keys.routes(user_id))
        return len(sessions)

    def close(self) -> None:
        self._r.close()
