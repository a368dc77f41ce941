"""docker/, checked as files (no container daemon runs here; the systemd unit is
test_systemd_unit.py's).

compose.yaml parses; every node service runs a real `vim-cluster` command (parsed by the
CLI's own argparse parser) on a config it mounts; each node service's filesystem is rebuilt
as the container would see it (node-configs at /etc/vim-cluster, the compose secrets made by
docker/make-secrets.sh at their targets) and every config passes `vim-cluster check`; ports,
hostnames and the services' names agree between compose and the configs; each node's
certificate is valid for its hostname; the Dockerfile builds a wheel and runs as a non-root
user with a HEALTHCHECK through `vim-cluster heartbeat`; .dockerignore keeps secrets out.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography import x509

from vim_cluster.cli import build_parser
from vim_cluster.config import load_config

from ..cluster.harness import run_cli

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
NODES = ("master", "dept-1", "dept-2")
MOUNT = PurePosixPath("/etc/vim-cluster")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def made_secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """docker/make-secrets.sh run into a temp folder (what an operator runs once)."""
    folder = tmp_path_factory.mktemp("docker-secrets")
    result = subprocess.run(["bash", str(DOCKER / "make-secrets.sh"), str(folder)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result
    return folder


def service_config(service: dict[str, Any]) -> PurePosixPath:
    command = service["command"]
    assert isinstance(command, list) and command[0] == "vim-cluster", command
    args = build_parser().parse_args(command[1:])  # a real vim-cluster command, or SystemExit
    assert args.command == "run"
    return PurePosixPath(args.config)


def container_root(tmp: Path, compose_doc: dict[str, Any], name: str, made: Path) -> Path:
    """The node service's /etc/vim-cluster as its container sees it, under `tmp`."""
    service = compose_doc["services"][name]
    root = tmp / name
    for volume in service["volumes"]:
        source, target, *mode = volume.split(":")
        assert mode == ["ro"], volume  # configs are mounted read-only
        shutil.copytree((DOCKER / source).resolve(), root / PurePosixPath(target).relative_to("/"))
    for secret in service["secrets"]:
        source_file = compose_doc["secrets"][secret["source"]]["file"]
        assert source_file.startswith("./secrets/"), source_file
        target = root / PurePosixPath(secret["target"]).relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(made / source_file.removeprefix("./secrets/"), target)
    return root


def test_compose_has_the_services_volumes_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert list(services) == ["redis", "mariadb", "mongo", *NODES]
    assert set(compose["volumes"]) == {"redis-data", "mariadb-data", "mongo-data"}
    for name in ("redis", "mariadb", "mongo"):
        assert services[name]["healthcheck"]["test"][0] == "CMD"
        assert any(v.split(":")[0] in compose["volumes"] for v in services[name]["volumes"])
    for name in NODES:
        service = services[name]
        depends = service["depends_on"]
        wanted = {"redis", "mariadb", "mongo"} | ({"master"} if name != "master" else set())
        assert set(depends) == wanted and all(d["condition"] == "service_healthy" for d in depends.values())
        assert service["healthcheck"]["test"][:3] == ["CMD", "vim-cluster", "heartbeat"]
        heartbeat = build_parser().parse_args(service["healthcheck"]["test"][2:])
        assert PurePosixPath(heartbeat.config) == service_config(service)
        assert service["environment"]["VIM_CLUSTER_CONFIG"] == str(service_config(service))
        assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}


def test_every_node_config_passes_check_where_its_container_would_read_it(
    compose: dict[str, Any], made_secrets: Path, tmp_path: Path
) -> None:
    for name in NODES:
        root = container_root(tmp_path, compose, name, made_secrets)
        config = root / service_config(compose["services"][name]).relative_to("/")
        result = run_cli("check", str(config))
        assert result.returncode == 0 and result.stdout == f"ok: {config} ({name}, " \
            f"{'master' if name == 'master' else 'slave'})\n", result


def test_ports_hostnames_and_service_names_agree(compose: dict[str, Any], made_secrets: Path, tmp_path: Path) -> None:
    services = compose["services"]
    configs = {}
    for name in NODES:
        root = container_root(tmp_path, compose, name, made_secrets)
        configs[name] = load_config(root / service_config(services[name]).relative_to("/"))
    master = configs["master"]
    for name, config in configs.items():
        service = services[name]
        assert config.node_id == name == service["hostname"]
        assert config.websocket.host == "0.0.0.0"
        published = {int(p.split(":")[1]): int(p.split(":")[0]) for p in service["ports"]}
        assert set(published) == {config.websocket.port, config.http.port}  # client and HTTP published
        assert config.websocket.forward_port not in published  # the forward port stays inside
        redis = urlsplit(config.redis.url)
        assert (redis.hostname, redis.port) == ("redis", 6379) and "redis" in services
        directory, messages = urlsplit(config.store.directory), urlsplit(config.store.messages)
        assert (directory.hostname, directory.port) == ("mariadb", 3306)
        assert directory.username == services["mariadb"]["environment"]["MARIADB_USER"]
        assert directory.password == services["mariadb"]["environment"]["MARIADB_PASSWORD"]
        assert directory.path.strip("/") == services["mariadb"]["environment"]["MARIADB_DATABASE"]
        assert (messages.hostname, messages.port) == ("mongo", 27017)
        if name != "master":
            master_url = urlsplit(config.cluster.master_url or "")
            assert master_url.scheme == "wss" and master_url.hostname == services["master"]["hostname"]
            assert master_url.port == master.websocket.forward_port
        cert = x509.load_pem_x509_certificate(config.websocket.tls_cert.read_bytes())  # type: ignore[union-attr]
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert name in names.get_values_for_type(x509.DNSName)
    host_ports = [p.split(":")[0] for n in NODES for p in services[n]["ports"]]
    assert len(host_ports) == len(set(host_ports))  # no two services publish the same host port


def test_the_dockerfile_builds_a_wheel_and_runs_unprivileged_with_a_heartbeat_healthcheck() -> None:
    lines = _instructions((DOCKER / "Dockerfile").read_text())
    stages = [args for op, args in lines if op == "FROM"]
    assert len(stages) == 2 and all("-slim" in s for s in stages) and stages[0].endswith(" AS builder")
    final = lines[max(i for i, (op, _) in enumerate(lines) if op == "FROM"):]
    assert any(op == "RUN" and "--wheel" in args for op, args in lines[:len(lines) - len(final)])
    installs = [args for op, args in final if op == "RUN" and "pip install" in args]
    assert installs and "--no-index" in installs[0] and "--find-links" in installs[0]
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    healthchecks = [args for op, args in final if op == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and '["vim-cluster", "heartbeat"]' in healthchecks[0]
    command = [args for op, args in final if op == "CMD"][-1]
    argv = yaml.safe_load(command)  # exec form is a JSON list
    assert argv[0] == "vim-cluster" and build_parser().parse_args(argv[1:]).command == "run"


def test_dockerignore_sends_only_what_builds_the_wheel() -> None:
    patterns = [p for p in (ROOT / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    assert patterns[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!vim_cluster/"} <= set(patterns)
    copied = [args.split()[0] for op, args in _instructions((DOCKER / "Dockerfile").read_text()) if op == "COPY"
              and not args.startswith("--from")]
    assert {c.rstrip("/") for c in " ".join(copied).split()} <= {"pyproject.toml", "vim_cluster"}


def test_the_wheel_builds_from_what_dockerignore_lets_into_the_context(tmp_path: Path) -> None:
    """The builder stage's `python -m build --wheel`, done by pip on a copy of the context."""
    context = tmp_path / "context"
    context.mkdir()
    for pattern in (ROOT / ".dockerignore").read_text().splitlines():
        if pattern.startswith("!"):
            source = ROOT / pattern[1:].rstrip("/")
            if source.is_dir():
                shutil.copytree(source, context / source.name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(source, context / source.name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "out"),
                             str(context)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result
    (wheel,) = (tmp_path / "out").glob("vim_cluster-*.whl")
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {"vim_cluster/web/index.html", "vim_cluster/web/dashboard.html", "vim_cluster/cli.py"} <= names
    assert "vim-cluster = vim_cluster.cli:main" in entry_points


def _instructions(text: str) -> list[tuple[str, str]]:
    """A Dockerfile's instructions as (OP, arguments), continuation lines joined."""
    joined = text.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, args = line.partition(" ")
            out.append((op.upper(), " ".join(args.split())))
    return out
