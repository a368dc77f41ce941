"""Picks the adapters from the config's URLs: the only module that imports adapters
(tests/unit/test_layers.py holds it to that). The node (node/app.py) and the operator commands
(admin, cli, launcher, erasure, bench ...) open their stores and the embedded Redis through it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import attrs

from .adapters.embedded_redis import default_dir, ensure_embedded_redis, running_url
from .adapters.embedded_redis import hold_embedded_redis as hold_embedded_redis
from .adapters.embedded_redis import release_embedded_redis as release_embedded_redis
from .adapters.redis_registry import RedisRegistry
from .adapters.sqlite_directory import SqliteDirectory
from .adapters.sqlite_messages import SqliteMessages
from .config import NodeConfig, StoreSync
from .errors import ConfigError, StoreUnavailable
from .lifecycle_ports import LifecycleStore, UserDirectory
from .ports import MessageStore

T = TypeVar("T")


def redis_url(config: NodeConfig, start: bool = True) -> str:
    """The Redis URL; for `embedded`, the running embedded server, started if `start`.
    Raises StoreUnavailable if it is not running and must not be started. Blocking."""
    if config.redis.url != "embedded":
        return config.redis.url
    if start:
        return ensure_embedded_redis()
    url = running_url()
    if url is None:
        raise StoreUnavailable(f"the embedded Redis is not running (in {default_dir()}): start the nodes first")
    return url


def open_registry(config: NodeConfig, start: bool = True) -> RedisRegistry:
    """The registry; operator tools pass start=False so they never start a Redis of their own."""
    return RedisRegistry(redis_url(config, start))


@attrs.frozen
class Backend(Generic[T]):
    """One store backend: the URL prefix it serves, how to open it (blocking: connects,
    migrates or indexes), and how many of its calls may run at once."""

    prefix: str
    open: Callable[[str, NodeConfig], T]
    concurrency: int


def _sqlite_directory(url: str, config: NodeConfig) -> UserDirectory:
    return SqliteDirectory(url[len("sqlite://"):])


def _mysql_directory(url: str, config: NodeConfig) -> UserDirectory:
    from .adapters.mysql_directory import MysqlDirectory  # pymysql only where configured

    return MysqlDirectory(url)


def _sqlite_messages(url: str, config: NodeConfig) -> LifecycleStore:
    return SqliteMessages(url[len("sqlite://"):], full_sync=config.store.sync is StoreSync.FULL)


def _mongo_messages(url: str, config: NodeConfig) -> LifecycleStore:
    from .adapters.mongo_messages import MongoMessages  # pymongo only where configured

    return MongoMessages(url, journaled=config.store.sync is StoreSync.FULL)


# The one table of backends by URL (config.py resolves every sqlite URL to `sqlite:///ABS`).
# SQLite has one connection per store: one call at a time. MySQL: its pool size.
DIRECTORIES: tuple[Backend[UserDirectory], ...] = (
    Backend("sqlite:///", _sqlite_directory, 1),
    Backend("mysql://", _mysql_directory, 4),
)
MESSAGE_STORES: tuple[Backend[LifecycleStore], ...] = (
    Backend("sqlite:///", _sqlite_messages, 1),
    Backend("mongodb://", _mongo_messages, 8),
)


def _backend(config: NodeConfig, key: str, url: str, table: tuple[Backend[T], ...]) -> Backend[T]:
    for backend in table:
        if url.startswith(backend.prefix):
            return backend
    raise ConfigError(str(config.file), key, f"no adapter for {url.split(':')[0]} in this build")


def open_directory(config: NodeConfig) -> UserDirectory:
    """The directory adapter for the URL's scheme (sqlite:// or mysql://), migrated. Blocking."""
    url = config.store.directory
    return _backend(config, "vim.store.directory", url, DIRECTORIES).open(url, config)


def open_messages(config: NodeConfig) -> LifecycleStore:
    """The message store for the URL's scheme (sqlite:// or mongodb://), indexed. Blocking."""
    url = config.store.messages
    return _backend(config, "vim.store.messages", url, MESSAGE_STORES).open(url, config)


def directory_concurrency(config: NodeConfig) -> int:
    """How many directory calls may run at once."""
    return _backend(config, "vim.store.directory", config.store.directory, DIRECTORIES).concurrency


def store_concurrency(config: NodeConfig) -> int:
    """How many message-store calls may run at once."""
    return _backend(config, "vim.store.messages", config.store.messages, MESSAGE_STORES).concurrency


def frame_log_writer(messages: MessageStore) -> Callable[[Sequence[tuple[str, int, int]]], None] | None:
    """The store's raw frame log (MongoDB's daily `message-log-*`), or None if it has none."""
    from .adapters.mongo_messages import FrameLogEntry, MongoMessages

    if not isinstance(messages, MongoMessages):
        return None
    store = messages

    def write(entries: Sequence[tuple[str, int, int]]) -> None:
        store.log_frames([FrameLogEntry(content, sender, at) for content, sender, at in entries])

    return write
