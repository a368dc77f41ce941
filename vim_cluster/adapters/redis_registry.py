"""The Registry port on Redis. Every key name the project uses is in `Keys`.

Rules:
- A node is alive while its lock key `vim:node-lock:{id}` exists; the lock has a TTL that the
  node's heartbeat renews, so a crashed node is dead within one TTL.
- Node descriptions (`vim:nodes`, a hash) outlive the lock, so operators see dead nodes too.
- Routes are one hash per user, one field per session: a late close of an old session deletes
  only its own field (compare-and-delete by session id), never a newer session's route.
- Every lock change is compare-and-set by owner token (Lua), so a process that lost its lock
  cannot delete or renew another's.
- Connection failures become StoreUnavailable here, once.
"""

from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import Iterable, Iterator

import attrs
import redis
import redis.exceptions

from ..errors import StoreUnavailable
from ..ids import MAX_WORKER
from ..model import UserId
from ..ports import NodeInfo, Route


class Keys:
    NODES = "vim:nodes"  # hash node_id -> NodeInfo JSON

    @staticmethod
    def node_lock(node_id: str) -> str:
        return f"vim:node-lock:{node_id}"

    @staticmethod
    def node_sessions(node_id: str) -> str:
        return f"vim:node-sessions:{node_id}"  # set of "user_id:session_id"

    @staticmethod
    def worker(worker: int) -> str:
        return f"vim:worker:{worker}"

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

    MASTER_LOCK = "vim:master-lock"

    @staticmethod
    def duty_lock(duty: str) -> str:
        return f"vim:duty-lock:{duty}"  # one node of the cluster runs the duty (e.g. the purge)

    @staticmethod
    def duty_done(duty: str) -> str:
        return f"vim:duty-done:{duty}"  # the stamp (e.g. the UTC day) of the last finished run


# KEYS[1] = lock; ARGV = owner, ttl. Renew only if we own it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
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


def _login_keys(username: str, address: str) -> list[str]:
    return [Keys.login_failures_pair(username, address), Keys.login_failures(username),
            Keys.login_failures_address(address)]


def _info_json(info: NodeInfo) -> str:
    return json.dumps(attrs.asdict(info))


def _info(raw: str | bytes, alive: bool) -> NodeInfo:
    fields = json.loads(raw)
    fields["alive"] = alive
    return NodeInfo(**fields)


class RedisRegistry:
    def __init__(self, url: str) -> None:
        self.url = url
        self._r = redis.Redis.from_url(
            url, socket_timeout=5, socket_connect_timeout=5, decode_responses=True
        )
        self._renew = self._r.register_script(_RENEW)
        self._release = self._r.register_script(_RELEASE)
        self._claim = self._r.register_script(_CLAIM)
        self._remove_route = self._r.register_script(_REMOVE_ROUTE)
        self._reserve_login = self._r.register_script(_RESERVE_LOGIN)
        self._refund_login = self._r.register_script(_REFUND_LOGIN)
        self._workers: dict[str, int] = {}

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                redis.exceptions.BusyLoadingError) as exc:
            raise StoreUnavailable(f"redis {self.url}: {exc}") from exc

    def ping(self) -> None:
        with self._errors():
            self._r.ping()

    def acquire_node(self, info: NodeInfo, owner: str, ttl_s: int, replacing: str | None = None) -> bool:
        with self._errors():
            if not self._claim(keys=[Keys.node_lock(info.node_id)], args=[owner, ttl_s, replacing or ""]):
                return False
            self._r.hset(Keys.NODES, info.node_id, _info_json(info))
            return True

    def node_owner(self, node_id: str) -> str | None:
        with self._errors():
            value = self._r.get(Keys.node_lock(node_id))
        return str(value) if value else None

    def acquire_master(self, node_id: str, owner: str, ttl_s: int, replacing: str | None = None) -> bool:
        with self._errors():
            value, old = f"{node_id} {owner}", f"{node_id} {replacing}" if replacing else ""
            return bool(self._claim(keys=[Keys.MASTER_LOCK], args=[value, ttl_s, old]))

    def master_holder(self) -> tuple[str, str] | None:
        """(node id, owner token) of the master lock's holder, if any."""
        with self._errors():
            value = self._r.get(Keys.MASTER_LOCK)
        if not value:
            return None
        node_id, _, owner = str(value).partition(" ")
        return node_id, owner

    def heartbeat(self, info: NodeInfo, owner: str, ttl_s: int) -> bool:
        with self._errors():
            if not self._renew(keys=[Keys.node_lock(info.node_id)], args=[owner, ttl_s]):
                return False
            if info.role == "master" and not self._renew(keys=[Keys.MASTER_LOCK], args=[f"{info.node_id} {owner}", ttl_s]):
                return False
            worker = self._workers.get(owner)
            if worker is not None and not self._renew(keys=[Keys.worker(worker)], args=[owner, ttl_s]):
                return False
            self._r.hset(Keys.NODES, info.node_id, _info_json(info))
            return True

    def release_node(self, node_id: str, owner: str) -> None:
        with self._errors():
            worker = self._workers.pop(owner, None)
            if worker is not None:
                self._release(keys=[Keys.worker(worker)], args=[owner])
            self._release(keys=[Keys.MASTER_LOCK], args=[f"{node_id} {owner}"])
            if self._release(keys=[Keys.node_lock(node_id)], args=[owner]):
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

    def lease_worker(self, node_id: str, owner: str, ttl_s: int) -> int:
        start = zlib.crc32(node_id.encode()) % (MAX_WORKER + 1)
        with self._errors():
            for offset in range(MAX_WORKER + 1):
                worker = (start + offset) % (MAX_WORKER + 1)
                if self._r.set(Keys.worker(worker), owner, nx=True, ex=ttl_s):
                    self._workers[owner] = worker
                    return worker
        raise StoreUnavailable("no free worker id: 1024 nodes hold one")

    def nodes(self) -> list[NodeInfo]:
        with self._errors():
            described = self._r.hgetall(Keys.NODES)
            ids = sorted(str(i) for i in described)
            alive = self._r.mget([Keys.node_lock(i) for i in ids]) if ids else []
        return [_info(described[i], a is not None) for i, a in zip(ids, alive, strict=True)]

    def forget_node(self, node_id: str) -> None:
        with self._errors():
            self._r.hdel(Keys.NODES, node_id)

    def add_route(self, user_id: UserId, route: Route) -> None:
        with self._errors():
            pipe = self._r.pipeline(transaction=True)
            pipe.hset(Keys.routes(user_id), route.session_id, json.dumps(attrs.asdict(route)))
            pipe.sadd(Keys.node_sessions(route.node_id), f"{user_id}:{route.session_id}")
            pipe.execute()

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
            nodes = sorted({r.node_id for rs in routes.values() for r in rs})
            alive = dict(zip(nodes, self._r.mget([Keys.node_lock(n) for n in nodes]), strict=True)) if nodes else {}
        return {user: [r for r in rs if alive.get(r.node_id)] for user, rs in routes.items()}

    def reserve_login(self, username: str, address: str, window_s: int, limits: tuple[int, int, int]) -> int:
        with self._errors():
            return int(self._reserve_login(keys=_login_keys(username, address), args=[window_s, *limits]))

    def refund_login(self, username: str, address: str) -> None:
        with self._errors():
            self._refund_login(keys=_login_keys(username, address))

    # -- cluster duties and erasure (lifecycle_ports.DutyLock) ---------------------------------

    def acquire_duty(self, duty: str, owner: str, ttl_s: int) -> bool:
        """Takes the duty's lock if it is free (or already ours); it lapses after ttl_s."""
        with self._errors():
            return bool(self._claim(keys=[Keys.duty_lock(duty)], args=[owner, ttl_s, ""]))

    def renew_duty(self, duty: str, owner: str, ttl_s: int) -> bool:
        with self._errors():
            return bool(self._renew(keys=[Keys.duty_lock(duty)], args=[owner, ttl_s]))

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
