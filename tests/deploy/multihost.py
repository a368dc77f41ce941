"""The deployment of docker/node-configs/ across network namespaces, for the multi-host test.

Hosts (netns.Network, one namespace each, one address each on a private bridge):
- db: Debian's redis-server, a private MariaDB and FerretDB (SQLite backend) on their standard
  ports, each requiring its generated password as compose.yaml's stores do (Redis through an
  ACL file with the password's SHA-256, FerretDB with SCRAM and its user `vim` in `admin`); the
  names redis, mariadb and mongo resolve to it;
- master, dept-1, dept-2: `vim-cluster run` with a copy of docker/node-configs/NODE.yaml, unchanged
  (with tls=False: its tls section removed and the master URL ws://), and a generated secrets/
  folder beside it (cluster secret; a trustme CA and a certificate for the node's hostname; the
  three store passwords);
- clients: where the test's client programs (agent.py) run.

`Deployment.start()` returns once every node's /healthz answers 200 (seen by a watcher on the
node's own host, which keeps reporting changes: `health(node)`). `Deployment.stop()` stops
every process it started and removes the namespaces, whatever state the run is in.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import redis
import yaml

from ..servers import FerretDB, MariaDB, PrivateServer, dies_with_us
from . import netns
from .pki import Pki

REPO = Path(__file__).resolve().parents[2]
NODE_CONFIGS = REPO / "docker" / "node-configs"
NODES = ("master", "dept-1", "dept-2")
HOSTS: dict[str, tuple[int, tuple[str, ...]]] = {
    "db": (10, ("db", "redis", "mariadb", "mongo")),
    "master": (11, ("master",)),
    "dept-1": (21, ("dept-1",)),
    "dept-2": (22, ("dept-2",)),
    "clients": (50, ("clients",)),
}


def _ports(node: str) -> tuple[int, int]:
    """The node's client and HTTP ports, as docker/node-configs/NODE.yaml sets them."""
    vim = yaml.safe_load((NODE_CONFIGS / f"{node}.yaml").read_text())["vim"]
    return int(vim["websocket"]["port"]), int(vim["http"]["port"])


CLIENT_PORT = {node: _ports(node)[0] for node in NODES}  # each node its own (docker/node-configs)
HTTP_PORT = {node: _ports(node)[1] for node in NODES}
STORE_PASSWORDS = ("mariadb-password", "mongo-password", "redis-password")  # the configs' *password-file
START_TIMEOUT = 60.0


def missing_requirement() -> str | None:
    """Why this machine cannot run the deployment (None when it can)."""
    why = netns.missing_requirement()
    if why is None and shutil.which("redis-server") is None:
        why = "Debian's redis-server is missing: apt-get install redis-server (or run scripts/install-test-servers.sh)"
    return why


# --- the db host's servers --------------------------------------------------------------------


class NetnsRedis(PrivateServer):
    """redis-server on the db host's 6379 (no persistence); answers on a Unix socket too."""

    name = "redis"

    def __init__(self, folder: Path, network: netns.Network, password: str) -> None:
        super().__init__(folder)
        self.network = network
        self.port = 6379
        self.socket = folder / "redis.sock"
        self.password = password
        self.acl = folder / "redis-users.acl"  # as docker/make-secrets.sh writes it
        self.acl.write_text(f"user default on #{hashlib.sha256(password.encode()).hexdigest()} ~* &* +@all\n")

    def command(self) -> list[str]:
        return [*self.network.exec_prefix("db"), "redis-server", "--bind", "0.0.0.0", "--port", str(self.port),
                "--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", str(self.folder),
                "--unixsocket", str(self.socket), "--daemonize", "no", "--aclfile", str(self.acl)]

    def answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            with redis.Redis(unix_socket_path=str(self.socket), password=self.password, socket_timeout=2) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False


class NetnsMariaDB(MariaDB):
    """The tests' private MariaDB on the db host's 3306, with the configs' `vim` account."""

    def __init__(self, folder: Path, network: netns.Network, password: str) -> None:
        super().__init__(folder)
        self.network = network
        self.port = 3306
        self.password = password

    def command(self) -> list[str]:
        command = [arg.replace("--bind-address=127.0.0.1", "--bind-address=0.0.0.0") for arg in super().command()]
        return [*self.network.exec_prefix("db"), *command]

    def answers(self) -> bool:  # from the root namespace: only the Unix socket is reachable
        if not self.socket.exists():
            return False
        try:
            self.admin().close()
        except Exception:  # noqa: BLE001 - pymysql raises several kinds while starting
            return False
        return True

    def create_database(self, name: str) -> None:
        with self.admin() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")


class NetnsFerretDB(FerretDB):
    """The tests' FerretDB (SQLite backend) on the db host's 27017; answers on a Unix socket too."""

    def __init__(self, folder: Path, network: netns.Network, password: str) -> None:
        super().__init__(folder, root_password=password)
        self.network = network
        self.port = 27017
        self.socket = folder / "ferretdb.sock"

    def command(self) -> list[str]:
        command = [f"--listen-addr=0.0.0.0:{self.port}" if arg.startswith("--listen-addr=") else arg
                   for arg in super().command()]
        return [*self.network.exec_prefix("db"), *command, f"--listen-unix={self.socket}"]

    def answers(self) -> bool:
        import socket

        if not self.socket.exists():
            return False
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(self.socket))
            except OSError:
                return False
        return True


# --- processes on a host ----------------------------------------------------------------------


def host_env(ca_file: Path | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if ca_file is not None:
        env["SSL_CERT_FILE"] = str(ca_file)  # clients trust the deployment's CA
    return env


class HostProcess:
    """A process on one host, its output in `log`; never outlives the test."""

    def __init__(self, network: netns.Network, host: str, command: list[str], log: Path,
                 env: dict[str, str], pipes: bool = False) -> None:
        self.host = host
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                dies_with_us([*network.exec_prefix(host), *command]), cwd=REPO, env=env,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else out, stderr=out, text=True,
            )

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM, SIGKILL after `grace` seconds."""
        if self.running():
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Agent(HostProcess):
    """`python -m tests.deploy.agent SCENARIO PARAMS` on a host: JSON lines out, commands in."""

    def __init__(self, network: netns.Network, host: str, scenario: str, params: dict[str, Any], log: Path,
                 env: dict[str, str]) -> None:
        command = [sys.executable, "-m", "tests.deploy.agent", scenario, json.dumps(params)]
        super().__init__(network, host, command, log, env, pipes=True)
        self.name = f"{scenario}@{host}"
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True)
        self._reader.start()

    def stop(self, grace: float = 15.0) -> int | None:
        """As HostProcess.stop, then closes the pipes (once the reader saw their end)."""
        returncode = super().stop(grace)
        self._reader.join(5)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass  # stdin: the agent is gone, so a buffered line has nowhere to go
        return returncode

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            try:
                self.lines.put(json.loads(line))
            except json.JSONDecodeError:
                self.lines.put({"step": "output", "text": line.rstrip()})
        self.lines.put(None)

    def expect(self, step: str, timeout: float) -> dict[str, Any]:
        """The next report of `step` (earlier reports of other steps are dropped)."""
        return self.until(lambda report: report["step"] == step, timeout, f"step {step!r}")

    def until(self, wanted: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        while True:
            try:
                report = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{self.name}: no {what} within {timeout} s; saw {seen[-5:]}\n"
                                     f"{self.log_tail()}") from None
            if report is None:
                self.lines.put(None)  # stays at EOF
                self.process.wait(10)
                raise AssertionError(f"{self.name} exited ({self.process.returncode}) before {what}; "
                                     f"saw {seen[-5:]}\n{self.log_tail()}")
            if wanted(report):
                return report
            seen.append(report)

    def tell(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def finish(self, timeout: float) -> int:
        """Waits for the agent to exit by itself; its exit status."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop(1)
            raise AssertionError(f"{self.name} still running after {timeout} s\n{self.log_tail()}") from None


# --- the deployment ---------------------------------------------------------------------------


def copy_config(node: str, folder: Path, tls: bool) -> Path:
    """docker/node-configs/NODE.yaml into `folder`: unchanged with TLS, else without TLS."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{node}.yaml"
    source = NODE_CONFIGS / f"{node}.yaml"
    if tls:
        shutil.copyfile(source, target)
        return target
    document = yaml.safe_load(source.read_text())
    vim = document["vim"]
    vim["websocket"].pop("tls", None)
    if "master-url" in vim["cluster"]:
        vim["cluster"]["master-url"] = vim["cluster"]["master-url"].replace("wss://", "ws://")
    target.write_text(yaml.safe_dump(document))
    return target


class Deployment:
    def __init__(self, folder: Path, prefix: str, tls: bool) -> None:
        self.folder = folder
        self.tls = tls
        self.network = netns.Network(prefix, HOSTS)
        self.pki = Pki(folder / "pki")  # a CA made now; each node gets a certificate for its hostname
        self.ca_file = self.pki.ca_file
        self.secret = secrets.token_hex(32)
        self.passwords = {name: secrets.token_hex(24) for name in STORE_PASSWORDS}  # as make-secrets.sh makes them
        self.configs: dict[str, Path] = {}
        self.nodes: dict[str, HostProcess] = {}
        self.watchers: dict[str, Agent] = {}
        self.agents: list[Agent] = []
        self.servers: list[PrivateServer] = []
        self.timings: dict[str, float] = {}

    # addresses as the hosts see them
    def client_url(self, node: str) -> str:
        return f"{'wss' if self.tls else 'ws'}://{node}:{CLIENT_PORT[node]}/"

    def healthz_url(self, node: str) -> str:
        return f"{'https' if self.tls else 'http'}://{node}:{HTTP_PORT[node]}/healthz"

    def env(self) -> dict[str, str]:
        return host_env(self.ca_file if self.tls else None)

    def start(self) -> Deployment:
        started = time.monotonic()
        try:
            self.network.create()
            self._start_db_host()
            self.timings["db host"] = time.monotonic() - started
            for node in NODES:
                self.configs[node] = copy_config(node, self.folder / node, self.tls)
                folder = self.pki.secrets_folder(self.folder / node, node, self.secret)
                for name, password in self.passwords.items():
                    (folder / name).write_text(password + "\n")
            self._start_node("master")
            for node in NODES[1:]:
                self._start_node(node)
            for node in NODES:
                self.wait_health(node, 200, START_TIMEOUT)
            self.timings["nodes"] = time.monotonic() - started - self.timings["db host"]
        except BaseException:
            self.stop()
            raise
        return self

    def _start_db_host(self) -> None:
        db = self.folder / "db"
        mariadb = NetnsMariaDB(db / "mariadb", self.network, self.passwords["mariadb-password"])
        for server in (NetnsRedis(db / "redis", self.network, self.passwords["redis-password"]),
                       NetnsFerretDB(db / "ferretdb", self.network, self.passwords["mongo-password"])):
            self.servers.append(server)
            server.start()
        self.servers.append(mariadb)
        mariadb.create()
        mariadb.create_database("vim")

    def _start_node(self, node: str) -> None:
        command = [sys.executable, "-m", "vim_cluster.cli", "run", str(self.configs[node])]
        self.nodes[node] = HostProcess(self.network, node, command, self.folder / f"{node}.log", self.env())
        self.watchers[node] = self.agent(node, "healthz", url=self.healthz_url(node), interval=0.2)

    def agent(self, host: str, scenario: str, **params: Any) -> Agent:
        log = self.folder / f"agent-{scenario}-{host}-{len(self.agents)}.log"
        agent = Agent(self.network, host, scenario, params, log, self.env())
        self.agents.append(agent)
        return agent

    def wait_health(self, node: str, status: int, timeout: float) -> dict[str, Any]:
        """The next /healthz report of `node` with `status` (reports come on every change)."""
        def wanted(report: dict[str, Any]) -> bool:
            if not self.nodes[node].running():
                raise AssertionError(f"{node} exited ({self.nodes[node].process.returncode}):\n"
                                     f"{self.nodes[node].log_tail()}")
            return report["step"] == "healthz" and report["status"] == status

        try:
            return self.watchers[node].until(wanted, timeout, f"/healthz {status}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{node} log:\n{self.nodes[node].log_tail()}") from None

    def cli(self, host: str, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """`vim-cluster ARGS` run on `host`."""
        command = [*self.network.exec_prefix(host), sys.executable, "-m", "vim_cluster.cli", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=self.env())

    def stop(self) -> None:
        """Stops everything this deployment started; never raises for what is already gone."""
        try:
            for process in [*self.agents, *self.nodes.values()]:
                if process.running():
                    process.process.terminate()
            for process in [*self.agents, *self.nodes.values()]:
                process.stop(10)
            for server in reversed(self.servers):
                server.stop()
        finally:
            self.network.destroy()  # kills whatever is left in the namespaces
