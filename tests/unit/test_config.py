"""Node configuration (PROTOCOL.md §3): every problem stops the node with one line naming the
file, the key and what is wrong; TOML works like YAML; relative paths follow the config file."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from vim_cluster.config import NodeType, load_config
from vim_cluster.errors import ConfigError

SECRET = "0123456789abcdef0123456789abcdef"
BASE: dict[str, Any] = {
    "vim": {
        "cluster": {"node-type": "master", "node-id": "node-001", "secret-file": "secret.key"},
        "websocket": {"host": "127.0.0.1", "port": 8180, "forward-port": 8081},
        "http": {"port": 8190},
        "redis": {"url": "redis://127.0.0.1:6379/3"},
        "store": {"directory": "sqlite:data/directory.db", "messages": "sqlite:data/messages.db"},
        "message": {"recall-window": 30},
    }
}


def config(**sections: dict[str, Any]) -> dict[str, Any]:
    """BASE with sections updated; a value of `...` removes that key."""
    document = copy.deepcopy(BASE)
    for section, values in sections.items():
        target = document["vim"].setdefault(section, {})
        for key, value in values.items():
            if value is ...:
                target.pop(key, None)
            else:
                target[key] = value
    return document


def write(folder: Path, document: Any, name: str = "node.yaml", secret: str | None = SECRET) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if secret is not None:
        (folder / "secret.key").write_text(secret + "\n")
    path = folder / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return path


def config_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    error = caught.value
    line = str(error)
    assert "\n" not in line, line
    assert line.startswith(f"{path}: {error.key}: "), line
    assert error.file == str(path)
    return error


def test_a_complete_config_loads_with_its_values(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, BASE))
    assert loaded.node_id == "node-001" and loaded.is_master
    assert loaded.cluster.node_type is NodeType.MASTER
    assert loaded.cluster.secret == SECRET.encode()
    assert (loaded.websocket.port, loaded.websocket.forward_port, loaded.http.port) == (8180, 8081, 8190)
    assert loaded.redis.url == "redis://127.0.0.1:6379/3"
    assert loaded.message.recall_window == 30
    assert loaded.client_url == "ws://127.0.0.1:8180/"


def test_documented_defaults_apply(tmp_path: Path) -> None:
    document = config(websocket={"host": ..., "forward-port": 8081}, redis={"url": ...}, message={"recall-window": ...})
    del document["vim"]["http"]
    ws = load_config(write(tmp_path, document)).websocket
    assert (ws.host, ws.idle_timeout, ws.max_frame, ws.max_content, ws.rate_limit, ws.contacts_budget) == (
        "127.0.0.1", 60, 65536, 16384, 200, 100_000)
    loaded = load_config(write(tmp_path, document))
    assert loaded.redis.url == "embedded"
    assert loaded.message.recall_window == 120
    assert loaded.http.port is None
    assert (loaded.group.create_per_hour, loaded.group.max_owned) == (20, 1000)


def test_missing_node_id_names_the_key(tmp_path: Path) -> None:
    error = config_error(write(tmp_path, config(cluster={"node-id": ...})))
    assert error.key == "vim.cluster.node-id" and "required" in error.problem


@pytest.mark.parametrize("node_id", ["Node-1", "node_1", "", "n" * 33, 5])
def test_malformed_node_id_names_the_key(tmp_path: Path, node_id: Any) -> None:
    error = config_error(write(tmp_path, config(cluster={"node-id": node_id})))
    assert error.key == "vim.cluster.node-id"


@pytest.mark.parametrize("port", [0, 65536, -1, "8180", 8180.5, True])
def test_bad_port_names_the_key_and_the_value(tmp_path: Path, port: Any) -> None:
    error = config_error(write(tmp_path, config(websocket={"port": port})))
    assert error.key == "vim.websocket.port"
    assert repr(port) in error.problem and "65535" in error.problem


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("websocket", "idle-timeout", 0),
        ("websocket", "idle-timeout", -5),
        ("websocket", "idle-timeout", float("nan")),
        ("websocket", "max-frame", 10),
        ("websocket", "max-content", 0),
        ("websocket", "max-content", 2 * 1024 * 1024 + 1),  # a message must fit in one forward frame
        ("websocket", "rate-limit", "lots"),
        ("websocket", "contacts-budget", 0),
        ("websocket", "max-connections-per-address", 0),
        ("websocket", "max-unauthenticated-per-address", "lots"),
        ("websocket", "max-connections", -1),
        ("websocket", "count-loopback", "yes"),
        ("group", "create-per-hour", 0),
        ("group", "max-owned", "many"),
        ("message", "recall-window", "2m"),
        ("message", "recall-window", float("nan")),
        ("message", "recall-window", float("inf")),
        ("websocket", "idle-timeout", float("inf")),
        ("websocket", "shutdown-grace", 1e20),
        ("cluster", "master-lease-ttl", 1_000_000_000_000),  # a lease that never lapses: no standby ever takes over
        ("cluster", "link-dead-after", 3601),
        ("cluster", "node-type", "leader"),
        ("cluster", "node-type", ["master"]),
        ("redis", "url", "http://127.0.0.1:6379"),
        ("http", "port", 70000),
        ("login", "lockout-per-user", 4),  # below the contract's 5 per username and address
        ("login", "lockout-per-address", "many"),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, section: str, key: str, value: Any) -> None:
    error = config_error(write(tmp_path, config(**{section: {key: value}})))
    assert error.key == f"vim.{section}.{key}"
    assert error.problem


def test_a_number_yaml_reads_as_text_says_so(tmp_path: Path) -> None:
    text = yaml.safe_dump(config()).replace("recall-window: 30", "recall-window: 1e3")
    error = config_error(write(tmp_path, text))
    assert error.problem == "must be a positive number, got '1e3' (text: YAML reads 1e3 as text, write 1.0e+3 or 1000)"


def test_unknown_key_names_the_key_and_the_known_ones(tmp_path: Path) -> None:
    error = config_error(write(tmp_path, config(websocket={"prot": 8180})))
    assert error.key == "vim.websocket.prot"
    assert "unknown key" in error.problem and "port" in error.problem


def test_unknown_section_names_it(tmp_path: Path) -> None:
    error = config_error(write(tmp_path, config(mongo={"url": "x"})))
    assert error.key == "vim.mongo" and "unknown section" in error.problem


def test_a_document_without_the_vim_root_is_refused(tmp_path: Path) -> None:
    document: object
    for document in ({"vim": BASE["vim"], "extra": 1}, {"cluster": {}}, [1, 2], "just text", ""):
        path = write(tmp_path, yaml.safe_dump(document) if document != "" else "")
        assert "vim" in config_error(path).problem


def test_master_without_forward_port_names_the_key(tmp_path: Path) -> None:
    error = config_error(write(tmp_path, config(websocket={"forward-port": ...})))
    assert error.key == "vim.websocket.forward-port" and "master" in error.problem


def test_master_forward_port_equal_to_client_port_is_refused(tmp_path: Path) -> None:
    error = config_error(write(tmp_path, config(websocket={"forward-port": 8180})))
    assert error.key == "vim.websocket.forward-port"


@pytest.mark.parametrize(("port", "other"), [(8180, "port"), (8081, "forward-port")])
def test_http_port_equal_to_a_websocket_port_is_refused(tmp_path: Path, port: int, other: str) -> None:
    """Else the node fails to listen, and says another process holds its own port."""
    error = config_error(write(tmp_path, config(http={"port": port})))
    assert error.key == "vim.http.port" and error.problem == f"must differ from vim.websocket.{other}"


def test_slave_without_master_url_names_the_key(tmp_path: Path) -> None:
    error = config_error(write(tmp_path, config(cluster={"node-type": "slave"}, websocket={"forward-port": ...})))
    assert error.key == "vim.cluster.master-url" and "slave" in error.problem


def test_slave_with_master_url_loads(tmp_path: Path) -> None:
    document = config(cluster={"node-type": "slave", "master-url": "ws://127.0.0.1:8081/forward"},
                      websocket={"forward-port": ...})
    loaded = load_config(write(tmp_path, document))
    assert not loaded.is_master and loaded.cluster.master_url == "ws://127.0.0.1:8081/forward"


@pytest.mark.parametrize("url", ["http://127.0.0.1:8081/", "ws://127.0.0.1/forward", "ws:///x"])
def test_malformed_master_url_names_the_key(tmp_path: Path, url: str) -> None:
    document = config(cluster={"node-type": "slave", "master-url": url}, websocket={"forward-port": ...})
    assert config_error(write(tmp_path, document)).key == "vim.cluster.master-url"


def test_missing_secret_file_names_the_key_and_the_path(tmp_path: Path) -> None:
    error = config_error(write(tmp_path, BASE, secret=None))
    assert error.key == "vim.cluster.secret-file"
    assert error.problem == (f"{tmp_path / 'secret.key'} does not exist: make one with "
                             f"`openssl rand -hex 32 > {tmp_path / 'secret.key'}` (the same file on every node)")


def test_a_key_given_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    """PyYAML keeps the last silently: the first section's keys would be lost."""
    text = yaml.safe_dump(config()) + "  websocket: {port: 9999}\n"
    error = config_error(write(tmp_path, text))
    assert error.key == "-" and error.problem.startswith("not valid YAML/TOML: key 'websocket' given twice at line ")


def test_a_key_a_yaml_merge_brings_may_be_given_again(tmp_path: Path) -> None:
    """`<<: *defaults` then the key itself: YAML's way to override, not a key given twice."""
    text = yaml.safe_dump(config()).replace("  websocket:\n", "  websocket:\n    <<: {port: 1111, idle-timeout: 5}\n", 1)
    assert "<<" in text
    loaded = load_config(write(tmp_path, text))
    assert loaded.websocket.port == 8180 and loaded.websocket.idle_timeout == 5


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_an_empty_config_file_says_so(tmp_path: Path, text: str) -> None:
    error = config_error(write(tmp_path, text))
    assert error.problem == "the file is empty (or only comments): a node config starts with 'vim:'"


def test_unreadable_secret_file_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "a-folder").mkdir()
    error = config_error(write(tmp_path, config(cluster={"secret-file": "a-folder"})))
    assert error.key == "vim.cluster.secret-file" and "cannot read" in error.problem


def test_too_short_secret_names_the_key(tmp_path: Path) -> None:
    error = config_error(write(tmp_path, BASE, secret="short"))
    assert error.key == "vim.cluster.secret-file" and "16 bytes" in error.problem


def test_secret_file_is_read_relative_to_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "conf", BASE)
    monkeypatch.chdir(tmp_path)
    assert load_config(Path("conf/node.yaml")).cluster.secret_file == (tmp_path / "conf" / "secret.key").resolve()
    assert load_config(path).cluster.secret == SECRET.encode()


def test_tls_cert_without_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    error = config_error(write(tmp_path, config(websocket={"tls-cert": "cert.pem"})))
    assert error.key == "vim.websocket.tls-cert"


def test_unreadable_tls_files_name_their_key(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    error = config_error(write(tmp_path, config(websocket={"tls-cert": "cert.pem", "tls-key": "missing.pem"})))
    assert error.key == "vim.websocket.tls-key" and "missing.pem" in error.problem


def test_relative_sqlite_paths_are_resolved_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "configs"
    write(folder, config(store={"directory": "sqlite:data/dir.db", "messages": "sqlite://db/msgs.db"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    store = load_config(Path("../configs/node.yaml")).store
    assert store.directory == f"sqlite://{(folder / 'data' / 'dir.db').resolve()}"
    assert store.messages == f"sqlite://{(folder / 'db' / 'msgs.db').resolve()}"


def test_absolute_sqlite_paths_and_server_urls_are_kept(tmp_path: Path) -> None:
    absolute = tmp_path / "abs" / "dir.db"
    document = config(store={"directory": f"sqlite://{absolute}", "messages": "mongodb://db.example:27017/vim"})
    store = load_config(write(tmp_path, document)).store
    assert store.directory == f"sqlite://{absolute}"
    assert store.messages == "mongodb://db.example:27017/vim"


@pytest.mark.parametrize(
    ("key", "url"),
    [("directory", "postgres://h/db"), ("messages", "mysql://u:p@h:3306/db"), ("directory", "mysql://u:p@h:3306/"),
     ("messages", "sqlite:")],
)
def test_store_urls_of_the_wrong_kind_name_the_key(tmp_path: Path, key: str, url: str) -> None:
    error = config_error(write(tmp_path, config(store={key: url})))
    assert error.key == f"vim.store.{key}"


TOML = """
[vim.cluster]
node-type = "master"
node-id = "node-001"
secret-file = "secret.key"

[vim.websocket]
host = "127.0.0.1"
port = 8180
forward-port = 8081

[vim.http]
port = 8190

[vim.redis]
url = "redis://127.0.0.1:6379/3"

[vim.store]
directory = "sqlite:data/directory.db"
messages = "sqlite:data/messages.db"

[vim.message]
recall-window = 30
"""


def test_toml_with_the_same_keys_loads_the_same_config(tmp_path: Path) -> None:
    from_toml = load_config(write(tmp_path, TOML, name="node.toml"))
    from_yaml = load_config(write(tmp_path, BASE, name="node.yaml"))
    assert from_toml.file != from_yaml.file
    for part in ("cluster", "websocket", "http", "redis", "store", "message"):
        assert getattr(from_toml, part) == getattr(from_yaml, part), part


def test_toml_errors_name_the_file_and_key_too(tmp_path: Path) -> None:
    path = write(tmp_path, TOML.replace("port = 8180", "port = 99999"), name="node.toml")
    assert config_error(path).key == "vim.websocket.port"
    broken = write(tmp_path, "[vim.cluster\nnode-id = 1", name="broken.toml")
    error = config_error(broken)
    assert error.key == "-" and "TOML" in error.problem


def test_invalid_yaml_and_missing_files_name_the_file(tmp_path: Path) -> None:
    broken = write(tmp_path, "vim: [unclosed", name="broken.yaml")
    assert "YAML" in config_error(broken).problem
    assert "cannot read" in config_error(tmp_path / "absent.yaml").problem


def test_cli_run_with_a_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, config(websocket={"port": 99999}), name="BAD.yaml")
    done = subprocess.run(
        [sys.executable, "-m", "vim_cluster.cli", "run", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2, done
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert str(path) in lines[0] and "vim.websocket.port" in lines[0] and "99999" in lines[0]
    assert done.stdout == ""


def test_public_host_names_the_advertised_urls(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, config(
        websocket={"host": "0.0.0.0", "public-host": "dept-1.example.internal"},
        http={"port": 8190})))
    assert loaded.client_url == "ws://dept-1.example.internal:8180/"
    assert loaded.http_url == "http://dept-1.example.internal:8190/"


def test_wildcard_host_without_public_host_advertises_loopback(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, config(websocket={"host": "0.0.0.0"}))).client_url \
        == "ws://127.0.0.1:8180/"


@pytest.mark.parametrize("host", ["ws://dept-1", "dept-1:8180", "", "-dept", 7])
def test_bad_public_host_names_the_key(tmp_path: Path, host: Any) -> None:
    error = config_error(write(tmp_path, config(websocket={"public-host": host})))
    assert error.key == "vim.websocket.public-host"


def test_the_shared_lockout_limits_are_config_keys(tmp_path: Path) -> None:
    """vim.login.lockout-per-user (all addresses together) and lockout-per-address; the
    per-(username, address) 5 and the 15 min window stay the contract's."""
    default = load_config(write(tmp_path / "default", config())).lockout
    assert (default.per_pair, default.per_user, default.per_address, default.window_s) == (5, 20, 100, 900)
    raised = load_config(write(tmp_path / "set", config(login={"lockout-per-user": 50, "lockout-per-address": 400})))
    assert raised.lockout.limits == (5, 50, 400) and raised.lockout.window_s == 900


def test_connection_caps_have_defaults_and_agree(tmp_path: Path) -> None:
    caps = load_config(write(tmp_path, config())).websocket.caps
    assert (caps.per_address, caps.unauthenticated_per_address, caps.total, caps.count_loopback) == (4096, 256, None, False)
    caps = load_config(write(tmp_path, config(websocket={"max-connections-per-address": 100, "max-connections": 5000,
                                                         "count-loopback": True}))).websocket.caps
    assert (caps.per_address, caps.unauthenticated_per_address, caps.total, caps.count_loopback) == (100, 100, 5000, True)
    error = config_error(write(tmp_path, config(websocket={"max-connections-per-address": 100,
                                                           "max-unauthenticated-per-address": 101})))
    assert error.key == "vim.websocket.max-unauthenticated-per-address"
    assert error.problem == "must not exceed vim.websocket.max-connections-per-address (100), got 101"
