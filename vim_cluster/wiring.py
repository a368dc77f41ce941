"""Picks the adapters from the config's URLs: the only module that imports adapters
(tests/unit/test_layers.py holds it to that). The node (node/app.py) and the operator commands
(admin, cli, launcher, erasure, bench ...) open their stores and the embedded Redis through it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .adapters.embedded_redis import default_dir, ensure_embedded_redis, running_url
from .adapters.embedded_redis import hold_embedded_redis as hold_embedded_redis
from .adapters.embedded_redis import release_embedded_redis as release_embedded_redis
from .adapters.redis_registry import RedisRegistry
from .adapters.sqlite_directory import SqliteDirectory
from .adapters.sqlite_messages import SqliteMessages
from .config import NodeConfig, sqlite_path
from .errors import ConfigError, StoreUnavailable
from .lifecycle_ports import LifecycleStore, UserDirectory
from .ports import MessageStore


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


def open_directory(config: NodeConfig) -> UserDirectory:
    """The directory adapter for the URL's scheme (sqlite:// or mysql://), migrated. Blocking."""
    url = config.store.directory
    path = sqlite_path(url)
    if path is not None:
        return SqliteDirectory(path)
    if url.startswith("mysql://"):
        from .adapters.mysql_directory import MysqlDirectory  # pymysql only where configured

        return MysqlDirectory(url)
    raise ConfigError(str(config.file), "vim.store.directory", f"no adapter for {url.split(':')[0]} in this build")


def open_messages(config: NodeConfig) -> LifecycleStore:
    """The message store for the URL's scheme (sqlite:// or mongodb://), indexed. Blocking."""
    url = config.store.messages
    path = sqlite_path(url)
    if path is not None:
        return SqliteMessages(path)
    if url.startswith("mongodb://"):
        from .adapters.mongo_messages import MongoMessages  # pymongo only where configured

        return MongoMessages(url)
    raise ConfigError(str(config.file), "vim.store.messages", f"no adapter for {url.split(':')[0]} in this build")


def directory_concurrency(config: NodeConfig) -> int:
    """How many directory calls may run at once (SQLite: one connection, one at a time)."""
    return 1 if sqlite_path(config.store.directory) is not None else 4  # the MySQL pool size


def store_concurrency(config: NodeConfig) -> int:
    """How many message-store calls may run at once (SQLite: one at a time)."""
    return 1 if sqlite_path(config.store.messages) is not None else 8


def frame_log_writer(messages: MessageStore) -> Callable[[Sequence[tuple[str, int, int]]], None] | None:
    """The store's raw frame log (MongoDB's daily `message-log-*`), or None if it has none."""
    from .adapters.mongo_messages import FrameLogEntry, MongoMessages

    if not isinstance(messages, MongoMessages):
        return None
    store = messages

    def write(entries: Sequence[tuple[str, int, int]]) -> None:
        store.log_frames([FrameLogEntry(content, sender, at) for content, sender, at in entries])

    return write
