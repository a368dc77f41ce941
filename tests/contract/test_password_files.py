"""Password files against real servers: a MariaDB user and a Redis server whose passwords hold
every character a URL treats specially, reached through configs that name only the files."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import redis

from vim_cluster import wiring
from vim_cluster.config import load_config
from vim_cluster.errors import StoreUnavailable

from ..cluster.harness import run_cli
from ..servers import FerretDB, MariaDB, RedisServer, redis_process  # noqa: F401 - fixture
from ..unit.test_config import config, write

PASSWORD = "p@ss/w:rd%?#&é "


def test_the_directory_opens_with_the_password_of_its_file(private_mariadb: MariaDB, tmp_path: Path) -> None:
    with private_mariadb.admin() as conn, conn.cursor() as cur:
        cur.execute("ALTER USER 'vim'@'%%' IDENTIFIED BY %s", (PASSWORD,))
        cur.execute("CREATE DATABASE vim_pw CHARACTER SET utf8mb4")
    (tmp_path / "mariadb-password").write_text(PASSWORD + "\n")
    path = write(tmp_path, config(store={"directory": f"mysql://vim@127.0.0.1:{private_mariadb.port}/vim_pw",
                                         "directory-password-file": "mariadb-password"}))
    directory = wiring.open_directory(load_config(path))
    try:
        assert directory.user_by_username("nobody") is None  # connected and migrated
    finally:
        directory.close()


def test_the_registry_reaches_a_redis_that_requires_the_password_of_its_file(
    redis_process: RedisServer, tmp_path: Path  # noqa: F811 - the fixture
) -> None:
    with redis.Redis(port=redis_process.port) as admin:
        admin.config_set("requirepass", PASSWORD)
    (tmp_path / "redis-password").write_text(PASSWORD + "\n")
    without = write(tmp_path / "without", config(redis={"url": redis_process.url}))
    with_file = write(tmp_path, config(redis={"url": redis_process.url, "password-file": "redis-password"}))
    with pytest.raises(StoreUnavailable, match="authenticated"):
        wiring.open_registry(load_config(without)).ping()
    wiring.open_registry(load_config(with_file)).ping()


def test_the_message_store_opens_with_the_password_of_its_file(tmp_path: Path) -> None:
    """FerretDB requiring SCRAM authentication, its user made at start as MongoDB's image makes
    the root user from MONGO_INITDB_ROOT_PASSWORD_FILE; the URL names the user and `admin`."""
    server = FerretDB(tmp_path / "ferretdb", root_password=PASSWORD)
    try:
        server.create()
        (tmp_path / "mongo-password").write_text(PASSWORD + "\n")
        base = f"mongodb://{server.user}@127.0.0.1:{server.port}/vim?authSource=admin"
        path = write(tmp_path, config(store={"messages": base, "messages-password-file": "mongo-password"}))
        messages = wiring.open_messages(load_config(path))
        try:
            assert messages.history("u1-2", None, 10) == ([], False)
        finally:
            messages.close()
        (tmp_path / "wrong").write_text("not-" + PASSWORD)
        wrong = write(tmp_path / "wrong-config", config(store={"messages": base, "messages-password-file": "../wrong"}))
        with pytest.raises(Exception, match="Authentication failed"):
            wiring.open_messages(load_config(wrong))
    finally:
        server.stop()


def _address_beyond_loopback() -> str | None:
    """An IPv4 address of this host's own that is not loopback (a connection to it comes from
    it, which Redis' protected mode treats as another host)."""
    shown = subprocess.run(["ip", "-o", "-4", "addr", "show", "scope", "global"], capture_output=True,
                           text=True, timeout=10).stdout
    found = re.search(r"\binet (\d+\.\d+\.\d+\.\d+)/", shown)
    return found.group(1) if found else None


def test_a_redis_that_refuses_this_client_is_one_line_not_a_traceback(
    redis_process: RedisServer, tmp_path: Path  # noqa: F811 - the fixture
) -> None:
    """A Redis left as Debian packages it (protected mode, no password) answers a node host with
    `DENIED ...`, and an ACL user without a command with `NOPERM`: the node, `nodes` and every
    command stopped with a 60-line traceback; now a one-line StoreUnavailable (exit 3 for
    `nodes`, a node exits 1 with one line) that says what Redis said."""
    address = _address_beyond_loopback()
    if address is None:
        pytest.skip("this host has no IPv4 address but loopback: protected mode cannot be seen")
    with redis.Redis(port=redis_process.port) as admin:
        admin.config_set("bind", f"127.0.0.1 {address}")
        admin.config_set("protected-mode", "yes")
        admin.acl_setuser("limited", enabled=True, passwords=["+a-password"], commands=["-@all", "+hello", "+auth"],
                          keys=["*"])
    denied = write(tmp_path / "denied", config(redis={"url": f"redis://{address}:{redis_process.port}/0"}))
    with pytest.raises(StoreUnavailable, match="DENIED Redis is running in protected mode"):
        wiring.open_registry(load_config(denied), start=False).nodes()
    nodes = run_cli("nodes", "--config", str(denied))
    assert nodes.returncode == 3 and nodes.stderr.count("\n") == 1, nodes
    assert nodes.stderr.startswith(f"vim-cluster nodes: cannot ask Redis: redis redis://{address}:"), nodes
    limited = write(tmp_path / "limited", config(redis={"url": f"redis://limited:a-password@127.0.0.1:{redis_process.port}/0"}))
    with pytest.raises(StoreUnavailable, match="no permissions to run the 'hgetall' command"):
        wiring.open_registry(load_config(limited), start=False).nodes()
