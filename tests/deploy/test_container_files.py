"""docker/, checked as files (no container daemon runs here; the systemd unit is
test_systemd_unit.py's).

compose.yaml parses; every node service runs a real `vim-cluster` command (parsed by the
CLI's own argparse parser) on a config it mounts; each node service's filesystem is rebuilt
as the container would see it (its config file mounted read-only in /etc/vim-cluster, the
compose secrets made by docker/make-secrets.sh at their targets) and every config passes
`vim-cluster check`; no secret is mounted inside a read-only mount (the runtime could not make
its mount point: moby/moby#39587); ports, hostnames and the services' names agree between
compose and the configs, and each published port is the node's own port, published 1:1 (the
web client takes the port from what the node advertises); each node's certificate is valid for
its hostname; make-secrets.sh leaves the secret and the keys 0600 and owned by the image's
user; the multi-host overlay names every host a node reaches and publishes the ports other
hosts need; the Dockerfile builds a wheel and runs as a non-root user with a HEALTHCHECK
through `vim-cluster heartbeat`; .dockerignore keeps secrets out. The docs' snippets and
instructions for these files are checked against them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml
from cryptography import x509

from vim_cluster.cli import build_parser
from vim_cluster.config import load_config

from ..cluster.harness import run_cli

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
NODES = ("master", "dept-1", "dept-2")
STORES = ("redis", "mariadb", "mongo")
MOUNT = PurePosixPath("/etc/vim-cluster")
OPERATIONS = ROOT / "docs" / "operations.md"
IMAGE_UID = 10001  # the Dockerfile's user (checked below)
STORE_UID = 999  # the user of the mariadb, mongo and redis images
STORE_SECRETS = ("mariadb-password", "mongo-password", "redis-password", "redis-users.acl")


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


def volumes(service: dict[str, Any]) -> list[tuple[str, PurePosixPath, bool]]:
    """(source, target, read-only) of each of a service's short-syntax volumes."""
    out = []
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        out.append((source, PurePosixPath(target), "ro" in (mode[0].split(",") if mode else [])))
    return out


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
    for source, mount, read_only in volumes(service):
        assert read_only, (name, source)  # configs are mounted read-only
        origin, inside = (DOCKER / source).resolve(), root / mount.relative_to("/")
        if origin.is_dir():
            shutil.copytree(origin, inside)
        else:
            inside.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(origin, inside)
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
        assert services[name]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
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


def test_no_secret_is_mounted_inside_a_read_only_mount(compose: dict[str, Any]) -> None:
    """Compose file secrets are bind mounts: their mount points are made in the container's
    filesystem, which a read-only bind mount around them forbids (moby/moby#39587)."""
    for name in NODES:
        service = compose["services"][name]
        read_only = [target for _, target, ro in volumes(service) if ro]
        assert read_only, name
        for secret in service["secrets"]:
            target = PurePosixPath(secret["target"])
            inside = [str(t) for t in read_only if target.is_relative_to(t)]
            assert not inside, f"{name}: secret {target} lies inside the read-only mount {inside}"


def test_each_node_publishes_its_own_ports_one_to_one(compose: dict[str, Any], made_secrets: Path,
                                                      tmp_path: Path) -> None:
    """The web client keeps the page's host name and takes the port from the URL its node
    advertises, so a host port must be the port the node listens on and advertises."""
    services = compose["services"]
    for name in NODES:
        root = container_root(tmp_path, compose, name, made_secrets)
        config = load_config(root / service_config(services[name]).relative_to("/"))
        own = {config.websocket.port, config.http.port}
        for published in services[name]["ports"]:
            host, container = published.split(":")
            assert host == container, f"{name}: {published} is not published 1:1"
            assert int(container) in own, f"{name}: {published} is none of its config's ports {own}"
        assert urlsplit(config.client_url).port == config.websocket.port
    clients = [load_config(tmp_path / n / service_config(services[n]).relative_to("/")).websocket.port for n in NODES]
    assert len(set(clients)) == len(NODES)  # one Docker host publishes them all


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
        assert directory.path.strip("/") == services["mariadb"]["environment"]["MARIADB_DATABASE"]
        assert (messages.hostname, messages.port) == ("mongo", 27017)
        assert messages.username == services["mongo"]["environment"]["MONGO_INITDB_ROOT_USERNAME"]
        assert "authSource=admin" in messages.query.split("&")  # the image makes its root user in admin
        for url, source in ((directory, "mariadb-password"), (messages, "mongo-password"), (redis, "redis-password")):
            assert unquote(url.password or "") == (made_secrets / source).read_text().strip(), (name, source)
        if name != "master":
            master_url = urlsplit(config.cluster.master_url or "")
            assert master_url.scheme == "wss" and master_url.hostname == services["master"]["hostname"]
            assert master_url.port == master.websocket.forward_port
        cert = x509.load_pem_x509_certificate(config.websocket.tls_cert.read_bytes())  # type: ignore[union-attr]
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert name in names.get_values_for_type(x509.DNSName)
    host_ports = [p.split(":")[0] for n in NODES for p in services[n]["ports"]]
    assert len(host_ports) == len(set(host_ports))  # no two services publish the same host port


def test_make_secrets_keeps_the_secret_and_keys_private_and_owned_by_the_image_user(tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    env = {**os.environ, "EXTRA_SANS": "vim.example.org, 192.0.2.7,2001:db8::7"}
    result = subprocess.run(["bash", str(DOCKER / "make-secrets.sh"), str(out)], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, result
    read_by_nodes = ["cluster-secret", "tls-ca.pem", *(f"{n}-tls-{k}.pem" for n in NODES for k in ("cert", "key"))]
    private = ["cluster-secret", "tls-ca-key.pem", *(f"{n}-tls-key.pem" for n in NODES)]
    assert sorted(p.name for p in out.iterdir()) == sorted({*read_by_nodes, *private, *STORE_SECRETS, "tls-ca.srl"})
    assert out.stat().st_mode & 0o777 == 0o700
    for file in out.iterdir():
        mode = file.stat().st_mode & 0o777
        wanted_mode = 0o440 if file.name in STORE_SECRETS else 0o600 if file.name in private else 0o644
        assert mode == wanted_mode, (file.name, oct(mode))
    if os.geteuid() == 0:  # root: the files a node container reads belong to the image's user
        for file in out.iterdir():
            wanted = (STORE_UID, IMAGE_UID) if file.name in STORE_SECRETS else (
                (IMAGE_UID, IMAGE_UID) if file.name in read_by_nodes else (0, 0))
            assert (file.stat().st_uid, file.stat().st_gid) == wanted, file.name
    for node in NODES:
        cert = x509.load_pem_x509_certificate((out / f"{node}-tls-cert.pem").read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert {node, "localhost", "vim.example.org"} <= set(names.get_values_for_type(x509.DNSName))
        assert {ipaddress.ip_address(a) for a in ("127.0.0.1", "192.0.2.7", "2001:db8::7")} <= set(
            names.get_values_for_type(x509.IPAddress))


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None, reason="needs root and runuser")
def test_make_secrets_run_by_another_user_prints_the_chown_to_run() -> None:
    with tempfile.TemporaryDirectory(prefix="make-secrets-") as folder:  # in /tmp: nobody reaches it
        shared = Path(folder)
        shared.chmod(0o777)
        script = shared / "make-secrets.sh"
        shutil.copy(DOCKER / "make-secrets.sh", script)
        out = shared / "secrets"
        result = subprocess.run(["runuser", "-u", "nobody", "--", "bash", str(script), str(out)],
                                capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, result
    chown = [line.strip() for line in result.stdout.splitlines() if "chown" in line]
    assert len(chown) == 2 and f"chown {IMAGE_UID}:{IMAGE_UID} " in chown[0], result.stdout
    assert "tls-ca-key.pem" not in chown[0] and str(out / "cluster-secret") in chown[0]
    assert f"chown {STORE_UID}:{IMAGE_UID} " in chown[1] and all(str(out / f) in chown[1] for f in STORE_SECRETS)


@pytest.fixture(scope="module")
def overlay() -> dict[str, Any]:
    document = yaml.safe_load((DOCKER / "compose.multihost.yaml").read_text())
    assert isinstance(document, dict)
    return document


def test_the_multihost_overlay_names_every_host_and_publishes_what_other_hosts_reach(
    compose: dict[str, Any], overlay: dict[str, Any], made_secrets: Path, tmp_path: Path
) -> None:
    """docker/compose.multihost.yaml over compose.yaml, one part per host (`up --no-deps`)."""
    services, extra = compose["services"], overlay["services"]
    assert set(extra) == set(services)
    configs = {}
    for name in NODES:
        root = container_root(tmp_path, compose, name, made_secrets)
        configs[name] = load_config(root / service_config(services[name]).relative_to("/"))
    reached = {urlsplit(c.redis.url).hostname for c in configs.values()}
    reached |= {urlsplit(u).hostname for c in configs.values() for u in (c.store.directory, c.store.messages)}
    reached |= {urlsplit(c.cluster.master_url or "").hostname for c in configs.values()} - {None}
    reached |= {urlsplit(c.client_url).hostname for c in configs.values()}  # the dashboard's peers
    for name in NODES:
        assert "depends_on" not in extra[name], name  # `up --no-deps` starts the node alone
        assert "ports" not in extra[name] or name == "master", name
        names = {entry.split(":", 1)[0]: entry.split(":", 1)[1] for entry in extra[name]["extra_hosts"]}
        assert set(names) == reached, name
        assert all(re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", address) for address in names.values()), names
    master = configs["master"]
    assert extra["master"]["ports"] == [f"{master.websocket.forward_port}:{master.websocket.forward_port}"]
    store_ports = {"redis": urlsplit(master.redis.url).port, "mariadb": urlsplit(master.store.directory).port,
                   "mongo": urlsplit(master.store.messages).port}
    for name in STORES:
        assert extra[name] == {"ports": [f"{store_ports[name]}:{store_ports[name]}"]}, name
    section = _section(OPERATIONS.read_text(), "## Containers")
    for name in ("master", "dept-1"):  # each node host starts its node alone
        assert re.search(rf"compose \$f up -d (--build )?--no-deps {name} ", section), name
    assert "compose.multihost.yaml" in section


def test_node_healthchecks_run_every_30_s_or_less_often(compose: dict[str, Any]) -> None:
    """One `vim-cluster heartbeat` costs about 0.5 s of CPU."""
    def seconds(value: str) -> float:
        match = re.fullmatch(r"(\d+)(s|m)", value)
        assert match, value
        return int(match.group(1)) * (60 if match.group(2) == "m" else 1)

    for name in NODES:
        assert seconds(compose["services"][name]["healthcheck"]["interval"]) >= 30, name
    (healthcheck,) = [args for op, args in _instructions((DOCKER / "Dockerfile").read_text()) if op == "HEALTHCHECK"]
    interval = re.search(r"--interval=(\S+)", healthcheck)
    assert interval and seconds(interval.group(1)) >= 30


def test_the_image_keeps_no_wheels_in_a_layer() -> None:
    """The wheels come from the builder stage through a bind mount, not a COPY (whose layer an
    `rm` in a later layer does not shrink)."""
    lines = _instructions((DOCKER / "Dockerfile").read_text())
    final = lines[max(i for i, (op, _) in enumerate(lines) if op == "FROM"):]
    assert not [args for op, args in final if op == "COPY" and args.startswith("--from")]
    (install,) = [args for op, args in final if op == "RUN" and "pip install" in args]
    mount = re.match(r"--mount=(\S+) ", install)
    assert mount and set(mount.group(1).split(",")) >= {"type=bind", "from=builder", "source=/wheels"}
    target = dict(kv.split("=", 1) for kv in mount.group(1).split(","))["target"]
    assert f"--find-links {target}" in install
    first = (DOCKER / "Dockerfile").read_text().splitlines()[0]
    assert re.fullmatch(r"# syntax=docker/dockerfile:1(\.\d+)*", first), first  # RUN --mount needs BuildKit's syntax


def test_the_docs_slave_snippet_passes_check_and_advertises_its_public_host(
    made_secrets: Path, tmp_path: Path
) -> None:
    """docs/operations.md's "slave part that differs", with the secrets beside it as on a host."""
    section = _section(OPERATIONS.read_text(), "## Deploying across hosts")
    (snippet,) = re.findall(r"slave part that differs:\n\s*```yaml\n(.*?)^\s*```", section, re.S | re.M)
    document = yaml.safe_load(snippet)
    assert document["vim"]["websocket"]["host"] == "0.0.0.0"
    (tmp_path / "secrets").mkdir()
    for file, made in (("cluster-secret", "cluster-secret"), ("tls-ca.pem", "tls-ca.pem"),
                       ("tls-cert.pem", "dept-1-tls-cert.pem"), ("tls-key.pem", "dept-1-tls-key.pem"),
                       *((p, p) for p in ("mariadb-password", "mongo-password", "redis-password"))):
        shutil.copy(made_secrets / made, tmp_path / "secrets" / file)
    config = tmp_path / "dept-1.yaml"
    config.write_text(snippet)
    result = run_cli("check", str(config))
    assert result.returncode == 0 and result.stdout == f"ok: {config} (dept-1, slave)\n", result
    loaded = load_config(config)
    assert urlsplit(loaded.client_url).hostname == urlsplit(loaded.http_url).hostname == "dept-1"
    docker = load_config(container_root(tmp_path / "c", yaml.safe_load((DOCKER / "compose.yaml").read_text()),
                                        "dept-1", made_secrets) / "etc/vim-cluster/dept-1.yaml")
    assert (loaded.websocket.port, loaded.http.port) == (docker.websocket.port, docker.http.port)


def test_the_docs_give_the_compose_ports_and_the_permission_rule(compose: dict[str, Any]) -> None:
    published = sorted(p.split(":")[0] for n in NODES for p in compose["services"][n]["ports"])
    for doc in (ROOT / "README.md", OPERATIONS):
        text = doc.read_text()
        section = _section(text, "## Containers")
        for port in published:
            assert port in section, (doc.name, port)
    ops = OPERATIONS.read_text()
    assert "8181:8180" not in ops and "stays inside the compose network" not in ops
    # one rule: configs root:vim-cluster 0640, secrets and keys vim-cluster 0600, uid 10001 in containers
    docs = {p.name: p.read_text() for p in (OPERATIONS, ROOT / "docs" / "multihost.md", ROOT / "docs" / "security.md")}
    for name, text in docs.items():
        for chown in re.findall(r"chown [^`\n]*", text):
            owner = chown.split()[1].split(":")[0]
            assert owner in ("root", "vim-cluster", str(IMAGE_UID)), (name, chown)
    credentials = docs["multihost.md"].split("**Database credentials.**")[1].split("\n- **")[0]
    assert "`root:vim-cluster`" in credentials and "mode 0640" in credentials, credentials  # the config
    assert "file at mode 0600" not in credentials  # root's 0600 config: the service cannot read it
    tls_block = re.findall(r"^```sh\n(.*?)^```", _section(ops, "## TLS"), re.S | re.M)[0]
    assert re.search(r"chown vim-cluster:vim-cluster [^\n]*tls-key\.pem", tls_block), tls_block
    assert re.search(r"chmod (0)?600 [^\n]*tls-key\.pem", tls_block), tls_block
    assert str(IMAGE_UID) in _section(ops, "## Containers")


def test_the_upgrade_procedure_replaces_the_code_of_an_unchanged_version() -> None:
    from vim_cluster import __version__

    section = _section(OPERATIONS.read_text(), "## Upgrading a node")
    assert "pip install --force-reinstall --no-deps" in section  # the same version is otherwise kept
    assert __version__ in section or "version" in section
    if not list(ROOT.glob("CHANGELOG*")) and not list(ROOT.glob("RELEASE*")):
        assert "read the release notes" not in section  # none exist


def _section(text: str, heading: str) -> str:
    """The text under `heading` (a whole heading line's start), up to the next heading of its
    level outside code blocks (a shell comment is no heading)."""
    level = len(heading.split()[0])
    start = text.index(f"\n{heading}") + 1
    masked = re.sub(r"^```.*?^```", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.S | re.M)
    end = re.search(rf"^#{{1,{level}}} ", masked[start + len(heading):], flags=re.M)
    return text[start:start + len(heading) + end.start()] if end else text[start:]


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
    user = users[-1].split(":")[0]
    assert any(op == "RUN" and f"--uid {IMAGE_UID} " in args and args.split("useradd")[1].split()[-1] == user
               for op, args in final if "useradd" in args)  # make-secrets.sh chowns to this uid
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
    assert {"vim_cluster/web/index.html", "vim_cluster/web/dashboard.html", "vim_cluster/web/chat.js",
            "vim_cluster/web/dashboard.js", "vim_cluster/cli.py"} <= names  # the pages need their scripts
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


# --- secrets, pinned images, hardening -----------------------------------------------------------


def _strings(value: Any) -> list[str]:
    """Every string inside a YAML value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def test_no_password_is_written_in_compose_or_the_configs(compose: dict[str, Any]) -> None:
    """The stores read their passwords from compose secrets (*_FILE, Redis' ACL file), the nodes
    from the same files (vim.store.*-password-file, vim.redis.password-file)."""
    services = compose["services"]
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key and key != "MARIADB_RANDOM_ROOT_PASSWORD":
                assert key.endswith("_FILE"), f"{name}: {key} holds a password in the compose file"
                mounted = [f"/run/secrets/{s}" for s in service["secrets"]]
                assert value in mounted, (name, key, value)
    for node in NODES:
        document = yaml.safe_load((DOCKER / "node-configs" / f"{node}.yaml").read_text())
        urls = [document["vim"]["redis"]["url"], document["vim"]["store"]["directory"],
                document["vim"]["store"]["messages"]]
        assert all(urlsplit(url).password is None for url in urls), (node, urls)
    text = "\n".join([(DOCKER / "compose.yaml").read_text(),
                      *((DOCKER / "node-configs" / f"{n}.yaml").read_text() for n in NODES)])
    assert "vim-dev-password" not in text
    # the file each store reads is the one its nodes read
    store_secret = {"mariadb": services["mariadb"]["environment"]["MARIADB_PASSWORD_FILE"],
                    "mongo": services["mongo"]["environment"]["MONGO_INITDB_ROOT_PASSWORD_FILE"]}
    assert store_secret == {"mariadb": "/run/secrets/mariadb-password", "mongo": "/run/secrets/mongo-password"}
    assert "/run/secrets/redis-users.acl" in services["redis"]["command"]
    for node in NODES:
        targets = {s["source"]: PurePosixPath(s["target"]) for s in services[node]["secrets"]}
        store = yaml.safe_load((DOCKER / "node-configs" / f"{node}.yaml").read_text())["vim"]
        for key, source in ((store["store"]["directory-password-file"], "mariadb-password"),
                            (store["store"]["messages-password-file"], "mongo-password"),
                            (store["redis"]["password-file"], "redis-password")):
            assert MOUNT / key == targets[source], (node, key, source)


def test_the_compose_healthcheck_of_redis_authenticates(compose: dict[str, Any]) -> None:
    redis_service = compose["services"]["redis"]
    assert redis_service["healthcheck"]["test"][0] == "CMD-SHELL"
    check = redis_service["healthcheck"]["test"][1]
    assert "REDISCLI_AUTH=" in check and "/run/secrets/redis-password" in check and "$$(" in check
    assert "redis-password" in redis_service["secrets"]


def test_a_real_redis_with_the_made_acl_file_takes_the_nodes_password_only(
    compose: dict[str, Any], made_secrets: Path, tmp_path: Path
) -> None:
    """redis-server started as compose starts it (--aclfile with make-secrets.sh's file); each
    node's config, read where its container reads it, reaches it; no password, no answer."""
    from vim_cluster.adapters.redis_registry import RedisRegistry
    from vim_cluster.errors import StoreUnavailable

    from ..servers import RedisServer

    class AclRedis(RedisServer):
        def command(self) -> list[str]:
            return [*super().command(), "--aclfile", str(made_secrets / "redis-users.acl")]

        def answers(self) -> bool:  # a PING needs the password
            return self.port_open()

    server = AclRedis(tmp_path / "redis")
    try:
        server.start()
        for name in NODES:
            root = container_root(tmp_path, compose, name, made_secrets)
            config = load_config(root / service_config(compose["services"][name]).relative_to("/"))
            assert "@redis:6379/" in config.redis.url
            RedisRegistry(config.redis.url.replace("@redis:6379/", f"@127.0.0.1:{server.port}/")).ping()
        with pytest.raises(StoreUnavailable, match="(?i)auth"):
            RedisRegistry(server.url).ping()
    finally:
        server.kill()


PINNED = re.compile(r"[a-z0-9./-]+:\d+\.\d+\.\d+(?:[-.][a-z0-9.]+)*(?:@sha256:[0-9a-f]{64})?")


def test_every_image_is_pinned_to_a_release(compose: dict[str, Any]) -> None:
    """`redis:7.4.2-alpine`, never `redis:7` or `latest`: an image changes only by an edit here."""
    for name in STORES:
        image = compose["services"][name]["image"]
        assert PINNED.fullmatch(image), f"{name}: {image} is not pinned to a release"
    text = (DOCKER / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    for stage in [a for op, a in _instructions(text) if op == "FROM"]:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], stage.split()[0])
        assert PINNED.fullmatch(image), f"Dockerfile: {image} is not pinned to a release"
    tools = re.findall(r"pip install --no-cache-dir ([a-z]\S*)", text)  # what the builder installs from PyPI
    assert tools and all(re.fullmatch(r"[a-z-]+==\d\S*", t) for t in tools), tools
    section = _section(OPERATIONS.read_text(), "## Containers")
    assert "Updating the images" in section


def test_every_container_is_hardened(compose: dict[str, Any]) -> None:
    """No capabilities for the nodes (uid 10001, ports above 1024) on a read-only root with a
    tmpfs /tmp; the stores keep only what their entrypoints need to chown their data and drop
    to their own user; nobody gains privileges; everything restarts and has a healthcheck."""
    allowed_for_stores = {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"}
    for name, service in compose["services"].items():
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["cap_drop"] == ["ALL"], name
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        assert not service.get("privileged"), name
        if name in NODES:
            assert service["read_only"] is True and "/tmp" in service["tmpfs"], name
            assert not service.get("cap_add"), name
            assert "user" not in service, name  # the image's own USER (uid 10001)
        else:
            assert set(service["cap_add"]) <= allowed_for_stores, name
    final = _instructions((DOCKER / "Dockerfile").read_text())
    env = " ".join(a for op, a in final if op == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # nothing to write on the read-only root
