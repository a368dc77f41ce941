"""`vim-cluster up`: every node config of a folder as its own process, stopped together.

Rules:
- Every config is validated before anything starts; one bad config starts nothing.
- A missing secret file that the configs name is created (32 random bytes, hex, mode 0600):
  a new checkout runs without a setup step. An existing one is never touched.
- Before anything is printed or started, `up` refuses (exit 2, one line) to start over a
  running cluster: a node of the configs alive in Redis, or a port of the configs taken.
- Masters start first; each node must say it is ready (its "ready at" line, read from its
  stdout: not a TCP probe, which another cluster's node could answer) before the next starts.
  Each node is printed once: client URL, web client URL, dashboard URL.
- Ctrl-C (SIGINT) or SIGTERM stops every node with SIGTERM, then SIGKILL after a grace period,
  department nodes before masters (each leaves through its master), however `up` was started
  (a background job of a script inherits SIGINT ignored: the handler is installed anyway). If
  a node dies by itself, the others are stopped too and `up` exits 1.
- `up` holds the embedded Redis (if a config uses it) while it runs; the last holder stops it.
"""

from __future__ import annotations

import errno
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .config import NodeConfig, load_config, parse_document
from .errors import ConfigError
from .wiring import hold_embedded_redis, release_embedded_redis

START_TIMEOUT = 30.0
STOP_GRACE = 10.0
CONFIG_SUFFIXES = (".yaml", ".yml", ".toml")


def config_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in CONFIG_SUFFIXES and p.is_file())


def ensure_secret(config_file: Path) -> None:
    """Creates the secret file a config names if it does not exist."""
    try:
        document = parse_document(config_file)
        name = document["vim"]["cluster"]["secret-file"]
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):  # TOML's and decoding's are ValueErrors
        return  # load_config reports the problem with file and key
    if not isinstance(name, str):
        return
    path = config_file.resolve().parent / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
        print(f"created the cluster secret {path}", flush=True)


def _wait_ready(process: subprocess.Popen, deadline: float) -> bool:
    """Reads the node's stdout until its "ready at" line (True), its exit or the deadline."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    pending = b""
    while time.monotonic() < deadline:
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            return False  # the node exited (its log says why)
        pending += chunk
        if b" ready at " in pending:
            return True
    return False


def running_cluster(configs: list[NodeConfig]) -> str | None:
    """Why these configs cannot start now (a node alive in Redis, a port taken), else None."""
    from .admin import live_node

    for config in configs:
        node = live_node(config)
        if node is not None:
            return (f"{config.node_id} is already running (pid {node.pid}, {node.client_url}); "
                    "stop that cluster first (`vim-cluster nodes` lists it)")
    for config in configs:
        for key, port in config_ports(config):
            problem = _port_problem(config.websocket.host, port)
            if problem:
                return f"{config.node_id}: {key} {port} on {config.websocket.host} is taken ({problem})"
    return None


def config_ports(config: NodeConfig) -> list[tuple[str, int]]:
    ports = [("vim.websocket.port", config.websocket.port)]
    if config.is_master and config.websocket.forward_port:
        ports.append(("vim.websocket.forward-port", config.websocket.forward_port))
    if config.http.port:
        ports.append(("vim.http.port", config.http.port))
    return ports


def _port_problem(host: str, port: int) -> str | None:
    """Binds (host, port) as the node would (SO_REUSEADDR) and lets go; the error if it fails."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve {host}: {exc.strerror}"
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return "another process listens on it"
                return exc.strerror or str(exc)
    return None


def node_line(config: NodeConfig) -> str:
    """The node's one line: id, role, client URL, web client URL, dashboard URL."""
    http = config.http_url
    web = f"web {http}  dashboard {http}dashboard" if http else "(no vim.http.port: no web client or dashboard)"
    return f"{config.node_id:<12} {config.cluster.node_type.value:<6} client {config.client_url}  {web}"


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM to each still running, then SIGKILL to those still running STOP_GRACE later."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_in_order(configs: list[NodeConfig], processes: list[subprocess.Popen]) -> None:
    """Department nodes first, then the master-capable ones: a department node that stops
    leaves the cluster through its master (its `leaving` packet, acked), which spares every
    other node a catch-up; with its master gone first it could only drop its link."""
    started = list(zip(configs, processes, strict=False))  # a start cut short has fewer processes
    _stop([p for c, p in started if not c.is_master])
    _stop([p for c, p in started if c.is_master])


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM stops `up` the way Ctrl-C does."""
    raise KeyboardInterrupt


def launch(folder: Path, log_json: bool = False, log_level: str = "info") -> int:
    if not folder.is_dir():
        print(f"vim-cluster up: {folder} is not a folder", file=sys.stderr)
        return 2
    files = config_files(folder)
    if not files:
        print(f"vim-cluster up: no *.yaml, *.yml or *.toml node config in {folder}", file=sys.stderr)
        return 2
    for file in files:
        ensure_secret(file)
    try:
        configs = sorted((load_config(f) for f in files), key=lambda c: not c.is_master)
    except ConfigError as exc:
        print(f"vim-cluster: config error: {exc}", file=sys.stderr)
        return 2
    refused = running_cluster(configs)
    if refused:
        print(f"vim-cluster up: {refused}", file=sys.stderr)
        return 2
    # Whether started from a terminal, a script or as a background job (which inherits SIGINT
    # ignored, and Python then installs no handler): both signals stop the cluster.
    signal.signal(signal.SIGINT, _terminate)
    signal.signal(signal.SIGTERM, _terminate)
    embedded = any(c.redis.url == "embedded" for c in configs)
    processes: list[subprocess.Popen] = []
    try:
        if embedded:
            hold_embedded_redis(os.getpid())
        for config in configs:
            process = _start(config, log_json, log_level)
            processes.append(process)
            if not _wait_ready(process, time.monotonic() + START_TIMEOUT):
                print(f"vim-cluster up: {config.node_id} did not start (see its log above)", file=sys.stderr)
                return 1
            print(node_line(config), flush=True)
        print("all nodes are up; Ctrl-C stops them", flush=True)
        while True:
            for config, process in zip(configs, processes, strict=True):
                if process.poll() is not None:
                    print(f"vim-cluster up: {config.node_id} exited with {process.returncode}; stopping all",
                          file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping...", flush=True)
        return 0
    finally:
        # A second Ctrl-C or SIGTERM must not cut the stopping short: the nodes run in their
        # own sessions and would be left running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_in_order(configs, processes)
        if embedded:
            release_embedded_redis(os.getpid())


def _start(config: NodeConfig, log_json: bool, log_level: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "vim_cluster.cli", "--log-level", log_level]
    if log_json:
        command.append("--log-json")
    command += ["run", str(config.file)]
    # A process group of its own: Ctrl-C reaches `up` only, which stops the nodes in order.
    # Its stdout (the "ready at" line) comes to `up`; its log (stderr) goes to the terminal.
    return subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE)
