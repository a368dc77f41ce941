"""scripts/systemd/vim-cluster@.service, checked as a file (and by `systemd-analyze verify`
when it is installed), and docs/operations.md's account of it.

A config error exits 2 from `run` itself and is not restarted (`RestartPreventExitStatus=2`
applies to the main process only, never to an `ExecStartPre=`: systemd/systemd#11868); a node
that exits 1 (its store down at start) is restarted for as long as it takes, never stopped by
a start limit (after which even the operator's `systemctl start` is refused).
"""

from __future__ import annotations

import configparser
import contextlib
import ctypes.util
import errno
import json
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import trio

from vim_cluster.cli import build_parser
from vim_cluster.config import load_config

from ..servers import RedisServer, redis_process  # noqa: F401 - fixture
from ..support import NodeProcess, free_port, online, write_config
from .pki import Pki

ROOT = Path(__file__).resolve().parents[2]
UNIT_FILE = ROOT / "scripts" / "systemd" / "vim-cluster@.service"
OPERATIONS = ROOT / "docs" / "operations.md"
RESTARTS_FOR_AT_LEAST_S = 600.0  # a db host may take many minutes to come back after a power loss


@pytest.fixture(scope="module")
def unit() -> configparser.ConfigParser:
    parsed = configparser.ConfigParser(interpolation=None, strict=True)
    parsed.optionxform = str  # type: ignore[assignment,method-assign]
    parsed.read_string(UNIT_FILE.read_text())
    return parsed


def seconds(value: str) -> float:
    """A systemd time span (`5s`, `300`, `10min`, `1h 30s`, `infinity`) in seconds."""
    if value.strip() == "infinity":
        return float("inf")
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts and "".join(f"{n}{u}" for n, u in parts) == value.replace(" ", ""), value
    return sum(float(n) * units[u] for n, u in parts)


def test_the_unit_runs_one_node_per_config_and_restarts_it_on_failure(
    unit: configparser.ConfigParser, tmp_path: Path
) -> None:
    service = unit["Service"]
    assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"] == "2"
    assert service["User"] not in ("root", "0") and service["KillSignal"] == "SIGTERM"
    start = shlex.split(service["ExecStart"].replace("%i", "dept-1"))
    assert Path(start[0]).name == "vim-cluster"
    args = build_parser().parse_args(start[1:])
    assert args.command == "run" and args.config == "/etc/vim-cluster/dept-1.yaml"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "VIM_CLUSTER_CONFIG=/etc/vim-cluster/%i.yaml" in service["Environment"].split()  # for heartbeat etc.
    analyze = shutil.which("systemd-analyze")
    if analyze:  # systemd's own reading of the unit: no warning about any line of it
        instance = tmp_path / "vim-cluster@dept-1.service"
        instance.write_text(UNIT_FILE.read_text().replace("/opt/vim-cluster/bin/vim-cluster",
                                                          str(Path(sys.executable).parent / "vim-cluster")))
        result = subprocess.run([analyze, "verify", str(instance)], capture_output=True, text=True, timeout=60)
        assert str(instance) not in result.stdout + result.stderr, result


def test_a_config_error_fails_once_and_is_not_restarted(unit: configparser.ConfigParser) -> None:
    """The config error must come from the main process, where RestartPreventExitStatus=2
    applies: an ExecStartPre that fails with it is restarted until the start limit."""
    service = unit["Service"]
    assert service["RestartPreventExitStatus"] == "2"
    for key in ("ExecStartPre", "ExecCondition"):
        assert key not in service, f"{key}={service[key]}: its exit 2 is restarted (systemd/systemd#11868)"


def test_no_start_limit_stops_the_restarts_of_a_node_whose_store_is_down(unit: configparser.ConfigParser) -> None:
    """`run` exits 1 within a second while a store is down at start; it is restarted every
    RestartSec. A start limit reached within 10 minutes would leave the node failed for good."""
    service, section = unit["Service"], unit["Unit"]
    restart_s = seconds(service.get("RestartSec", "100ms"))
    assert 1 <= restart_s <= 30, "RestartSec stays modest: a node comes back soon after its store"
    assert "StartLimitIntervalSec" not in service and "StartLimitBurst" not in service  # [Unit] keys
    interval = seconds(section.get("StartLimitIntervalSec", "10s"))
    burst = int(section.get("StartLimitBurst", "5"))
    if interval == 0:
        return  # no start limit at all
    starts_in_a_window = int(interval // restart_s) + 1  # a start takes at least RestartSec
    hit_after_s = burst * restart_s
    assert starts_in_a_window <= burst or hit_after_s >= RESTARTS_FOR_AT_LEAST_S, (interval, burst, restart_s)


def test_operations_md_describes_the_unit_as_it_is(unit: configparser.ConfigParser) -> None:
    text = OPERATIONS.read_text()
    start = text.index("\n## systemd\n")
    section = text[start:text.index("\n## ", start + 5)]
    service, section_unit = unit["Service"], unit["Unit"]
    assert section.count("ExecStartPre") == section.count("no `ExecStartPre") + section.count(
        "a failing `ExecStartPre`")  # named only as what the unit does not have
    assert f"RestartPreventExitStatus={service['RestartPreventExitStatus']}" in section
    assert f"StartLimitIntervalSec={section_unit['StartLimitIntervalSec']}" in section
    assert f"RestartSec={service['RestartSec']}" in section
    assert f"TimeoutStopSec={service['TimeoutStopSec']}" in section
    assert "shutdown-grace" in section  # the stop timeout grows with the drain
    assert "reset-failed" not in section or "StartLimitIntervalSec=0" in section


def test_the_unit_confines_the_node_to_what_it_needs(unit: configparser.ConfigParser, tmp_path: Path) -> None:
    """No capabilities, devices, kernel knobs or foreign address families; files it creates are
    not world-readable. `systemd-analyze security` rated the unit 8.5 EXPOSED before; now OK."""
    service = unit["Service"]
    assert service["CapabilityBoundingSet"] == "" and service["UMask"] == "0027"
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}
    for key in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables", "ProtectKernelModules",
                "ProtectControlGroups", "RestrictNamespaces", "RestrictSUIDSGID", "LockPersonality", "ProtectHome",
                "MemoryDenyWriteExecute"):
        assert service[key] == "yes", key
    assert service["ProtectSystem"] == "strict" and service["ReadWritePaths"] == service["WorkingDirectory"]
    assert service["SystemCallFilter"] == "@system-service" and service["SystemCallErrorNumber"] == "EPERM"
    assert int(service["LimitNOFILE"]) >= 65536  # one descriptor per client connection
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return  # the file's own lines are checked above
    result = subprocess.run([analyze, "security", "--offline=true", str(UNIT_FILE)], capture_output=True, text=True,
                            timeout=60)
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert level is not None and float(level.group(1)) <= 4.0, result.stdout[-500:]


CONFINE = '''\
"""Runs a command as the unit confines it: MemoryDenyWriteExecute (PR_SET_MDWE) and
SystemCallFilter (a seccomp allow list through libseccomp), then execs it."""
import ctypes, json, mmap, os, sys

settings = json.loads(os.environ.pop("CONFINE"))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS, as NoNewPrivileges=yes
if settings["mdwe"]:
    assert libc.prctl(65, 1, 0, 0, 0) == 0, ctypes.get_errno()  # PR_SET_MDWE, REFUSE_EXEC_GAIN
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except OSError:
        pass
    else:
        raise SystemExit("MDWE did not refuse a writable and executable mapping")
seccomp = ctypes.CDLL("libseccomp.so.2")
seccomp.seccomp_init.restype = ctypes.c_void_p
seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
seccomp.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
ctx = seccomp.seccomp_init(0x00050000 | settings["errno"])  # SCMP_ACT_ERRNO(EPERM)
for name in settings["allowed"]:
    number = seccomp.seccomp_syscall_resolve_name(name.encode())
    if number >= 0:
        assert seccomp.seccomp_rule_add(ctx, 0x7FFF0000, number, 0) == 0, name  # SCMP_ACT_ALLOW
assert seccomp.seccomp_load(ctx) == 0
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
'''


def syscall_set(analyze: str, names: list[str]) -> set[str]:
    """The system calls of SystemCallFilter= entries (`@group`s expanded as systemd-analyze
    lists them, recursively; @default always, as systemd adds it to an allow list)."""
    listing = subprocess.run([analyze, "syscall-filter"], capture_output=True, text=True, timeout=60, check=True)
    groups: dict[str, list[str]] = {}
    current = None
    for line in listing.stdout.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].append(line.strip())
    out: set[str] = set()

    def add(entry: str) -> None:
        if entry.startswith("@"):
            for member in groups[entry]:
                add(member)
        else:
            out.add(entry)

    for name in [*names, "@default"]:
        add(name)
    return out


async def test_a_node_serves_under_the_units_syscall_filter_and_memory_deny_write_execute(
    unit: configparser.ConfigParser, tmp_path: Path, redis_process: RedisServer  # noqa: F811 - the fixture
) -> None:
    """A real node (TLS, argon2 login, SQLite, Redis, HTTP) run under the unit's
    SystemCallFilter (its groups as this systemd expands them) and MemoryDenyWriteExecute,
    applied with seccomp and PR_SET_MDWE as systemd would: it starts, answers /healthz, two
    users register, log in and exchange a message."""
    service = unit["Service"]
    analyze = shutil.which("systemd-analyze")
    if analyze is None or ctypes.util.find_library("seccomp") is None:
        pytest.skip("needs systemd-analyze (the groups) and libseccomp")
    assert service["SystemCallErrorNumber"] == "EPERM" and service["MemoryDenyWriteExecute"] == "yes"
    allowed = syscall_set(analyze, service["SystemCallFilter"].split())
    confine = tmp_path / "confine.py"
    confine.write_text(CONFINE)
    wrapper = tmp_path / "confined-python"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(confine))} \"$@\"\n")
    wrapper.chmod(0o755)
    pki = Pki(tmp_path / "pki")
    folder = tmp_path / "node"
    pki.secrets_folder(folder, "localhost")
    port = free_port()
    config = write_config(folder, redis_url=redis_process.url, websocket={"port": port, "tls": {
        "cert-file": "secrets/tls-cert.pem", "key-file": "secrets/tls-key.pem"}}, extra={"http": {"port": free_port()}})
    node = NodeProcess(config, port, env={"CONFINE": json.dumps({"mdwe": True, "errno": errno.EPERM,
                                                                 "allowed": sorted(allowed)})})
    node.python = str(wrapper)
    node.url = f"wss://127.0.0.1:{port}/"
    try:
        await trio.to_thread.run_sync(node.start, 60.0)
        http_port = load_config(config).http.port
        context = pki.client_context()
        with trio.fail_after(60):
            status = await trio.to_thread.run_sync(
                lambda: urllib.request.urlopen(f"https://127.0.0.1:{http_port}/healthz", context=context,
                                               timeout=10).status)
            assert status == 200
            async with contextlib.AsyncExitStack() as stack:
                tag = secrets.token_hex(3)
                alice = await online(stack, node.url, f"alice{tag}", ssl_context=context)
                bob = await online(stack, node.url, f"bob{tag}", ssl_context=context)
                await alice.send("message", cid=f"c{tag}", chatId=bob.user_id, type="friend",
                                 messageType="text", content="confined")
                assert (await alice.expect("ack", 20))["id"]
                assert (await bob.expect("message", 20))["content"] == "confined"
    finally:
        node.stop()
    log = node.log.read_text()
    assert "Traceback" not in log and "Operation not permitted" not in log, log[-3000:]
