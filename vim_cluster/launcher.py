"""`vim-cluster up`: every node config of a folder as its own process, stopped together.

Rules:
- Every config is validated before anything starts; one bad config starts nothing.
- A missing secret file that the configs name is created (32 random bytes, hex, mode 0600):
  a new checkout runs without a setup step. An existing one is never touched.
- Masters start first; each node must accept connections before the next starts.
- Ctrl-C (or SIGTERM) stops every node with SIGTERM, then SIGKILL after a grace period. If a
  node dies by itself, the others are stopped too and `up` exits 1.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .adapters.embedded_redis import ensure_embedded_redis, running_url, stop_embedded_redis
from .config import NodeConfig, load_config, parse_document
from .errors import ConfigError

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
    except (OSError, KeyError, TypeError, ValueError):
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


def _wait_listening(port: int, process: subprocess.Popen, deadline: float) -> bool:
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def _stop(processes: list[subprocess.Popen]) -> None:
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
    started_redis = False
    if any(c.redis.url == "embedded" for c in configs) and running_url() is None:
        ensure_embedded_redis()
        started_redis = True
    processes: list[subprocess.Popen] = []
    signal.signal(signal.SIGTERM, _terminate)
    try:
        for config in configs:
            process = _start(config, log_json, log_level)
            processes.append(process)
            if not _wait_listening(config.websocket.port, process, time.monotonic() + START_TIMEOUT):
                print(f"vim-cluster up: {config.node_id} did not start (see its log above)", file=sys.stderr)
                return 1
            print(f"{config.node_id:<12} {config.cluster.node_type.value:<6} {config.client_url}", flush=True)
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
        _stop(processes)
        if started_redis:
            stop_embedded_redis()


def _start(config: NodeConfig, log_json: bool, log_level: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "vim_cluster.cli", "--log-level", log_level]
    if log_json:
        command.append("--log-json")
    command += ["run", str(config.file)]
    # A process group of its own: Ctrl-C reaches `up` only, which stops the nodes in order.
    return subprocess.Popen(command, start_new_session=True)
