"""Node configuration: one YAML (or TOML) file per node, keys as in PROTOCOL.md §3.

Rules:
- Unknown keys and bad values are errors; `load_config` raises `ConfigError(file, key,
  problem)` for the first problem found, so the node stops with one clear line.
- Relative paths (secret-file, password files, TLS files, sqlite stores) are relative to the
  config file's folder.
- The secret file and the password files are read here and the TLS files are loaded: a node
  that cannot read them does not start (and `vim-cluster check` says so). A password file's
  password goes into its URL (percent-encoded), so the config file itself need hold none.
"""

from __future__ import annotations

import enum
import re
import ssl
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import attrs
import yaml

from .config_values import (
    TLS_KEYS,
    SubkeyError,
    boolean,
    int_range,
    origins,
    public_host,
    redis_url,
    seconds_up_to,
    string,
    tls_section,
    ws_url,
    ws_urls,
)
from .core.lockout import LockoutPolicy
from .errors import ConfigError
from .tunables import CONFIG_KEYS, DEFAULTS, Tunables

NODE_ID_RE = re.compile(r"^[a-z0-9-]{1,32}$")
MIN_SECRET_BYTES = 16


class NodeType(enum.Enum):
    MASTER = "master"
    SLAVE = "slave"


# Permission bits that make a file of secrets too open (`too_open`): the cluster secret with
# any bit for its group or others (whoever reads it can act as any user, docs/security.md); a
# TLS key or a password file readable by every user (a group may: the containers' are 0440).
SECRET_OPEN_BITS, WORLD_OPEN_BITS = 0o077, 0o007


def too_open(path: Path, bits: int) -> int | None:
    """The file's permission bits when any of `bits` is set, else None (OSError if it cannot
    be read): the node's start-up check of its secret and `vim-cluster check` share it."""
    mode = path.stat().st_mode & 0o777
    return mode if mode & bits else None


@attrs.frozen
class ClusterConfig:
    node_type: NodeType
    node_id: str
    master_urls: tuple[str, ...]  # vim.cluster.master-url: the candidates, in order (fallback)
    secret: bytes = attrs.field(repr=False)
    secret_file: Path
    forward_url: str | None = None  # vim.cluster.forward-url: what a master publishes, if set

    @property
    def master_url(self) -> str | None:
        """The first master-url candidate (None on a master without candidates)."""
        return self.master_urls[0] if self.master_urls else None


@attrs.frozen
class ConnectionCapsConfig:
    """vim.websocket.max-connections-per-address, max-unauthenticated-per-address,
    max-connections (None: from the open-files limit) and count-loopback."""

    per_address: int = 4096
    unauthenticated_per_address: int = 256
    total: int | None = None
    count_loopback: bool = False


@attrs.frozen
class WebsocketConfig:
    host: str
    port: int
    forward_port: int | None
    idle_timeout: float
    max_frame: int
    max_content: int
    rate_limit: int
    tls_cert: Path | None  # vim.websocket.tls.cert-file (or the older tls-cert)
    tls_key: Path | None  # vim.websocket.tls.key-file (or the older tls-key)
    tls_ca: Path | None = None  # vim.websocket.tls.ca-file: verifies the master's certificate
    public_host: str | None = None  # vim.websocket.public-host: the name others reach it by
    allowed_origins: tuple[str, ...] = ()  # vim.websocket.allowed-origins (core/origins.py)
    contacts_budget: int = 100_000  # vim.websocket.contacts-budget: users `contacts` lists per minute per connection
    # Connection caps (core/conn_caps.py): per source address, of those not yet authenticated,
    # of the client port (None: from the open-files limit, node/admission.py), loopback counted
    caps: ConnectionCapsConfig = ConnectionCapsConfig()

    @property
    def tls(self) -> bool:
        """Whether this node's listeners (client, forward, HTTP) speak TLS."""
        return self.tls_cert is not None


@attrs.frozen
class HttpConfig:
    port: int | None


@attrs.frozen
class RedisConfig:
    url: str  # "embedded", redis://..., rediss://..., unix://... or redis+sentinel://... (redis_url.py)


class StoreSync(enum.Enum):
    """How a message store commit reaches the disk before the ack (docs/operations.md)."""

    FULL = "full"  # survives a power loss: SQLite synchronous=FULL, MongoDB journaled writes
    NORMAL = "normal"  # survives a process crash; a power loss may lose the last commits


@attrs.frozen
class StoreConfig:
    directory: str  # sqlite:///ABS/PATH (resolved) or mysql://USER:PASS@HOST:PORT/DB
    messages: str  # sqlite:///ABS/PATH (resolved) or mongodb://HOST:PORT/DB
    sync: StoreSync = StoreSync.FULL


@attrs.frozen
class MessageConfig:
    recall_window: float
    # Data lifecycle (docs/data-lifecycle.md): None keeps forever.
    retention_days: int | None = None
    offline_retention_days: int | None = None
    purge_hour: int = 2  # UTC hour at which one node of the cluster purges
    purge_batch: int = 50  # rows per purge transaction (a live write waits at most one)


@attrs.frozen
class GroupConfig:
    """What one user may create (docs/protocol.md §2.6): groups a user creates per hour, and owns."""

    create_per_hour: int = 20
    max_owned: int = 1000


@attrs.frozen
class NodeConfig:
    file: Path
    cluster: ClusterConfig
    websocket: WebsocketConfig
    http: HttpConfig
    redis: RedisConfig
    store: StoreConfig
    message: MessageConfig
    group: GroupConfig = GroupConfig()
    tunables: Tunables = DEFAULTS  # timings and sizes: defaults, a few set by config keys (tunables.py)
    lockout: LockoutPolicy = LockoutPolicy()  # vim.login: the login lockout's limits (core/lockout.py)
    ignored: tuple[str, ...] = ()  # "KEY: why" for keys given that this node's type does not use
    password_files: tuple[tuple[str, Path], ...] = ()  # (dotted key, file) of each *password-file given

    @property
    def node_id(self) -> str:
        return self.cluster.node_id

    @property
    def is_master(self) -> bool:
        return self.cluster.node_type is NodeType.MASTER

    @property
    def client_url(self) -> str:
        scheme = "wss" if self.websocket.tls else "ws"
        return f"{scheme}://{self.public_host}:{self.websocket.port}/"

    @property
    def public_host(self) -> str:
        """The host part of this node's URLs as others reach it: `public-host` when set, else
        the listen address (a wildcard address stands for loopback)."""
        return url_host(self.websocket.public_host or self.websocket.host)

    @property
    def http_url(self) -> str | None:
        """The HTTP port's base URL (https:// with TLS), or None without an HTTP port."""
        if self.http.port is None:
            return None
        scheme = "https" if self.websocket.tls else "http"
        return f"{scheme}://{self.public_host}:{self.http.port}/"


def url_host(host: str) -> str:
    """A listen address as a URL's host: a wildcard address stands for loopback (IPv4)."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _node_id(value: Any) -> str:
    if not isinstance(value, str) or not NODE_ID_RE.match(value):
        raise ValueError(f"must match [a-z0-9-]{{1,32}}, got {value!r}")
    return value


def _node_type(value: Any) -> NodeType:
    try:
        return NodeType(value)
    except ValueError:
        raise ValueError(f"must be 'master' or 'slave', got {value!r}") from None


def _store_sync(value: Any) -> StoreSync:
    try:
        return StoreSync(value)
    except ValueError:
        raise ValueError(f"must be 'full' or 'normal', got {value!r}") from None


PORT = int_range(1, 65535)
LOCKOUT_DEFAULTS = LockoutPolicy()
CAPS_DEFAULTS = ConnectionCapsConfig()
HOUR, DAY = 3600.0, 86400.0  # the upper bounds of timing keys

# (section, key) -> (checker, default); a default of REQUIRED means the key must be given.
REQUIRED = object()
SCHEMA: dict[str, dict[str, tuple[Callable[[Any], Any], Any]]] = {
    "cluster": {
        "node-type": (_node_type, NodeType.MASTER),
        "node-id": (_node_id, REQUIRED),
        "master-url": (ws_urls, ()),
        "secret-file": (string, REQUIRED),
        "forward-url": (ws_url, None),
        "link-dead-after": (seconds_up_to(HOUR), None),  # None: tunables.DEFAULTS (so for the four below)
        "master-lease-ttl": (seconds_up_to(HOUR), None),
        "forward-queue-bytes": (int_range(65536, 1 << 40), None),
    },
    "websocket": {
        "host": (string, "127.0.0.1"),
        "public-host": (public_host, None),
        "port": (PORT, REQUIRED),
        "forward-port": (PORT, None),
        "idle-timeout": (seconds_up_to(DAY), 60.0),
        "max-frame": (int_range(1024, 64 * 1024 * 1024), 65536),
        # At most 2 MiB: a message's frame (content escaped up to 6x in JSON, `extend` up to the
        # same size) then fits in one forward frame (16 MiB, protocol/forward_connection.py).
        "max-content": (int_range(1, 2 * 1024 * 1024), 16384),
        "rate-limit": (int_range(1, 10_000_000), 200),
        "contacts-budget": (int_range(1, 1_000_000_000), 100_000),
        "max-connections-per-address": (int_range(1, 10_000_000), CAPS_DEFAULTS.per_address),
        "max-unauthenticated-per-address": (int_range(1, 10_000_000), None),  # None: 256, at most the above
        "max-connections": (int_range(1, 10_000_000), None),  # None: from the open-files limit
        "count-loopback": (boolean, False),
        "allowed-origins": (origins, ()),
        "tls": (tls_section, None),
        "tls-cert": (string, None),  # older spelling of tls.cert-file
        "tls-key": (string, None),  # older spelling of tls.key-file
        "shutdown-grace": (seconds_up_to(HOUR), None),
        "send-queue-frames": (int_range(1, 10_000_000), None),
        "send-queue-bytes": (int_range(1024, 1 << 40), None),
    },
    "http": {"port": (PORT, None)},
    "redis": {"url": (redis_url, "embedded"), "password-file": (string, None)},
    "store": {
        "directory": (string, "sqlite:data/directory.db"),
        "messages": (string, "sqlite:data/messages.db"),
        "directory-password-file": (string, None),
        "messages-password-file": (string, None),
        "sync": (_store_sync, StoreSync.FULL),
    },
    "message": {
        "recall-window": (seconds_up_to(36_500 * DAY), 120.0),
        "retention-days": (int_range(1, 36_500), None),
        "offline-retention-days": (int_range(1, 36_500), None),
        "purge-hour": (int_range(0, 23), 2),
        "purge-batch": (int_range(10, 100_000), 50),
    },
    # The lockout's shared limits (core/lockout.py), the same on every node. Never below the
    # per-(username, address) 5 of the contract: fewer would lock a user out before it says.
    "login": {
        "lockout-per-user": (int_range(LOCKOUT_DEFAULTS.per_pair, 1_000_000), LOCKOUT_DEFAULTS.per_user),
        "lockout-per-address": (int_range(LOCKOUT_DEFAULTS.per_pair, 1_000_000), LOCKOUT_DEFAULTS.per_address),
    },
    "group": {
        "create-per-hour": (int_range(1, 1_000_000), 20),
        "max-owned": (int_range(1, 10_000_000), 1000),
    },
}


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last
    silently: a second `websocket:` section would drop the first's keys). TOML refuses it
    itself."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_document(path: Path) -> Any:
    """Read a YAML or TOML file (by extension; .toml is TOML, anything else YAML)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        return tomllib.loads(text)
    return yaml.load(text, Loader=_UniqueKeys)  # noqa: S506 - a SafeLoader


def load_config(path: str | Path) -> NodeConfig:
    """Load and validate one node's config; raises ConfigError naming file, key and problem."""
    file = Path(path)
    name = str(file)
    try:
        document = parse_document(file)
    except OSError as exc:
        raise ConfigError(name, "-", f"cannot read the file: {exc.strerror or exc}") from None
    except (yaml.YAMLError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(name, "-", f"not valid YAML/TOML: {_one_line(exc)}") from None
    if document is None or document == {}:
        raise ConfigError(name, "-", "the file is empty (or only comments): a node config starts with 'vim:'")
    if not isinstance(document, Mapping) or set(document) != {"vim"}:
        found = sorted(document) if isinstance(document, Mapping) else type(document).__name__
        raise ConfigError(name, "-", f"must hold exactly one top-level key 'vim', found {found}")
    values = _read_sections(name, document["vim"])
    return _build(file, values)


def _one_line(exc: Exception) -> str:
    """A parser's complaint in one line (PyYAML's span several, with a caret drawing)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{exc.problem or exc.context or type(exc).__name__}{where}"
    return " ".join(str(exc).split())


def _read_sections(name: str, vim: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(vim, Mapping):
        raise ConfigError(name, "vim", "must be a mapping of sections")
    for section in vim:
        if section not in SCHEMA:
            raise ConfigError(name, f"vim.{section}", f"unknown section (known: {', '.join(SCHEMA)})")
    values: dict[str, dict[str, Any]] = {}
    for section, fields in SCHEMA.items():
        given = vim.get(section) or {}
        if not isinstance(given, Mapping):
            raise ConfigError(name, f"vim.{section}", "must be a mapping")
        for key in given:
            if key not in fields:
                raise ConfigError(name, f"vim.{section}.{key}", f"unknown key (known: {', '.join(fields)})")
        values[section] = {}
        for key, (check, default) in fields.items():
            dotted = f"vim.{section}.{key}"
            if key not in given or given[key] is None:
                if default is REQUIRED:
                    raise ConfigError(name, dotted, "is required")
                values[section][key] = default
                continue
            try:
                values[section][key] = check(given[key])
            except SubkeyError as exc:
                raise ConfigError(name, f"{dotted}.{exc.subkey}", str(exc)) from None
            except ValueError as exc:
                raise ConfigError(name, dotted, str(exc)) from None
    return values


def _build(file: Path, v: dict[str, dict[str, Any]]) -> NodeConfig:
    name = str(file)
    base = file.resolve().parent
    c, ws = v["cluster"], v["websocket"]
    node_type = c["node-type"]
    if node_type is NodeType.MASTER and ws["forward-port"] is None:
        raise ConfigError(name, "vim.websocket.forward-port", "is required on a master node")
    if node_type is NodeType.SLAVE and not c["master-url"]:
        raise ConfigError(name, "vim.cluster.master-url", "is required on a slave node")
    if node_type is NodeType.MASTER and ws["forward-port"] == ws["port"]:
        raise ConfigError(name, "vim.websocket.forward-port", "must differ from vim.websocket.port")
    taken = {ws["port"]: "port", **({ws["forward-port"]: "forward-port"} if node_type is NodeType.MASTER else {})}
    if v["http"]["port"] in taken:
        raise ConfigError(name, "vim.http.port", f"must differ from vim.websocket.{taken[v['http']['port']]}")
    secret_file = base / c["secret-file"]
    secret = _read_secret(name, secret_file)
    tls = _tls_files(name, ws, base)
    store = v["store"]
    return NodeConfig(
        file=file,
        cluster=ClusterConfig(
            node_type=node_type,
            node_id=c["node-id"],
            master_urls=c["master-url"],
            secret=secret,
            secret_file=secret_file,
            forward_url=c["forward-url"],
        ),
        websocket=WebsocketConfig(
            host=ws["host"],
            port=ws["port"],
            forward_port=ws["forward-port"],
            idle_timeout=ws["idle-timeout"],
            max_frame=ws["max-frame"],
            max_content=ws["max-content"],
            rate_limit=ws["rate-limit"],
            tls_cert=tls["cert-file"],
            tls_key=tls["key-file"],
            tls_ca=tls["ca-file"],
            public_host=ws["public-host"],
            allowed_origins=ws["allowed-origins"],
            contacts_budget=ws["contacts-budget"],
            caps=_caps(name, ws),
        ),
        http=HttpConfig(port=v["http"]["port"]),
        redis=RedisConfig(url=_with_password(name, "vim.redis", "url", v["redis"]["url"], "password-file",
                                             v["redis"]["password-file"], base)),
        store=StoreConfig(
            directory=_with_password(
                name, "vim.store", "directory",
                _store_url(name, "vim.store.directory", store["directory"], base, ("sqlite", "mysql")),
                "directory-password-file", store["directory-password-file"], base),
            messages=_with_password(
                name, "vim.store", "messages",
                _store_url(name, "vim.store.messages", store["messages"], base, ("sqlite", "mongodb")),
                "messages-password-file", store["messages-password-file"], base),
            sync=store["sync"],
        ),
        message=_message_config(name, v["message"]),
        group=GroupConfig(create_per_hour=v["group"]["create-per-hour"], max_owned=v["group"]["max-owned"]),
        tunables=_tunables(name, v),
        lockout=LockoutPolicy(per_user=v["login"]["lockout-per-user"], per_address=v["login"]["lockout-per-address"]),
        ignored=_ignored(node_type, v),
        password_files=tuple((f"{section}.{key}", base / file) for section, values, key in (
            ("vim.redis", v["redis"], "password-file"), ("vim.store", store, "directory-password-file"),
            ("vim.store", store, "messages-password-file")) if (file := values[key]) is not None),
    )


MASTER_ONLY = {  # keys a slave node does not use, and what they are for
    ("websocket", "forward-port"): "a master's port for the forward channel",
    ("cluster", "forward-url"): "the forward URL a master publishes",
    ("cluster", "master-lease-ttl"): "a master's lease",
}


def _ignored(node_type: NodeType, v: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    """The keys given that this node's type ignores (`check` and the node's start warn)."""
    if node_type is not NodeType.SLAVE:
        return ()
    return tuple(f"vim.{section}.{key}: ignored on a slave node ({why})"
                 for (section, key), why in MASTER_ONLY.items() if v[section][key] is not None)


def _tunables(name: str, v: dict[str, dict[str, Any]]) -> Tunables:
    """The config's tunables keys over the defaults; a bad combination is one ConfigError."""
    keys: dict[str, Any] = {}
    for dotted in CONFIG_KEYS:
        _, section, key = dotted.split(".")
        keys[dotted] = v[section][key]
    try:
        return Tunables.from_keys(keys)
    except ConfigError as exc:
        raise ConfigError(name, exc.key, exc.problem) from None


def _caps(name: str, ws: dict[str, Any]) -> ConnectionCapsConfig:
    """The connection caps; the unauthenticated cap, unless given, is its default or the
    per-address cap if that is lower."""
    per_address, pending = ws["max-connections-per-address"], ws["max-unauthenticated-per-address"]
    if pending is None:
        pending = min(CAPS_DEFAULTS.unauthenticated_per_address, per_address)
    elif pending > per_address:
        raise ConfigError(name, "vim.websocket.max-unauthenticated-per-address",
                          f"must not exceed vim.websocket.max-connections-per-address ({per_address}), got {pending}")
    return ConnectionCapsConfig(per_address, pending, ws["max-connections"], ws["count-loopback"])


def _message_config(name: str, m: dict[str, Any]) -> MessageConfig:
    keep, offline = m["retention-days"], m["offline-retention-days"]
    if keep is not None and offline is not None and offline > keep:
        raise ConfigError(name, "vim.message.offline-retention-days",
                          f"must not exceed vim.message.retention-days ({keep}), got {offline}")
    return MessageConfig(
        recall_window=m["recall-window"],
        retention_days=keep,
        offline_retention_days=offline,
        purge_hour=m["purge-hour"],
        purge_batch=m["purge-batch"],
    )


def _read_secret(name: str, path: Path) -> bytes:
    try:
        secret = path.read_bytes().strip()
    except FileNotFoundError:
        problem = f"{path} does not exist: make one with `openssl rand -hex 32 > {path}` (the same file on every node)"
        raise ConfigError(name, "vim.cluster.secret-file", problem) from None
    except OSError as exc:
        problem = f"cannot read {path}: {exc.strerror or exc}"
        raise ConfigError(name, "vim.cluster.secret-file", problem) from None
    if len(secret) < MIN_SECRET_BYTES:
        problem = f"{path} must hold at least {MIN_SECRET_BYTES} bytes of secret"
        raise ConfigError(name, "vim.cluster.secret-file", problem)
    return secret


def _with_password(name: str, section: str, url_key: str, url: str, file_key: str, file: str | None,
                   base: Path) -> str:
    """`url` with the password read from `file` (a key `*password-file`), percent-encoded into
    it: the URL names the user (a Redis URL may name none) and no password of its own."""
    if file is None:
        return url
    dotted = f"{section}.{file_key}"
    scheme = urlsplit(url).scheme
    if scheme not in ("mysql", "mongodb", "redis", "rediss", "redis+sentinel"):
        raise ConfigError(name, dotted, f"takes a password for a network URL in {section}.{url_key}, "
                          f"not {url.split(':', 1)[0]!r}")
    rest = url[len(scheme) + 3:]
    netloc, slash, tail = rest.partition("/")
    credentials, _, hosts = netloc.rpartition("@")
    user, colon, _ = credentials.partition(":")
    if colon:
        raise ConfigError(name, dotted, f"{section}.{url_key} holds a password already: give it in one place")
    if not user and scheme in ("mysql", "mongodb"):
        raise ConfigError(name, dotted, f"{section}.{url_key} must name the user: {scheme}://USER@HOST...")
    source = base / file
    try:
        password = source.read_text(encoding="utf-8").rstrip("\r\n")  # as the database images read *_FILE
    except OSError as exc:
        raise ConfigError(name, dotted, f"cannot read {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(name, dotted, f"{source} is not UTF-8 text") from None
    if not password:
        raise ConfigError(name, dotted, f"{source} is empty")
    return f"{scheme}://{user}:{quote(password, safe='')}@{hosts}{slash}{tail}"


def _tls_files(name: str, ws: dict[str, Any], base: Path) -> dict[str, Path | None]:
    """The TLS files (tls.cert-file, tls.key-file, tls.ca-file; tls-cert and tls-key are older
    spellings), resolved against the config's folder, checked by loading them."""
    given: dict[str, str] = dict(ws["tls"] or {})
    spelled = {key: f"vim.websocket.tls.{key}" for key in TLS_KEYS}  # key names as written
    for old, new in (("tls-cert", "cert-file"), ("tls-key", "key-file")):
        if ws[old] is not None:
            if new in given:
                raise ConfigError(name, f"vim.websocket.{old}", f"give tls.{new} or the older {old}, not both")
            given[new] = ws[old]
            spelled[new] = f"vim.websocket.{old}"
    if ("cert-file" in given) != ("key-file" in given):
        present = "cert-file" if "cert-file" in given else "key-file"
        raise ConfigError(name, spelled[present], "the certificate and its key go together (give both)")
    files: dict[str, Path | None] = {key: base / given[key] if key in given else None for key in TLS_KEYS}
    for tls_key, path in files.items():
        if path is not None:
            _check_readable(name, spelled[tls_key], path)
    cert, key, ca = files["cert-file"], files["key-file"], files["ca-file"]
    try:
        if cert is not None and key is not None:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError) as exc:
        problem = f"cannot load the certificate {cert} with the key {key}: {_ssl_problem(exc)}"
        raise ConfigError(name, spelled["cert-file"], problem) from None
    try:
        if ca is not None:
            ssl.create_default_context(cafile=str(ca))
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(name, "vim.websocket.tls.ca-file", f"cannot load CA certificates from {ca}: "
                          f"{_ssl_problem(exc)}") from None
    return files


def _ssl_problem(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{exc.reason} (not PEM, or the key does not match the certificate?)"
    return " ".join(str(exc).split()) or type(exc).__name__


def _check_readable(name: str, key: str, path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(name, key, f"cannot read {path}: {exc.strerror or exc}") from None


def sqlite_path(url: str) -> str | None:
    """The file path of a resolved sqlite URL (`sqlite:///ABS`), else None."""
    return url[len("sqlite://"):] if url.startswith("sqlite:///") else None


def _store_url(name: str, key: str, url: str, base: Path, schemes: tuple[str, ...]) -> str:
    """Check a store URL's scheme; turn sqlite paths into absolute `sqlite:///ABS` URLs.

    `sqlite:///abs/path` is absolute; `sqlite://rel/path` and `sqlite:rel/path` are relative
    to the config file's folder.
    """
    scheme = url.split(":", 1)[0]
    if scheme not in schemes:
        raise ConfigError(name, key, f"must be a {' or '.join(s + '://' for s in schemes)} URL, got {url!r}")
    if scheme != "sqlite":
        parts = urlsplit(url)
        if not parts.hostname or not parts.path.strip("/"):
            raise ConfigError(name, key, f"must name a host and a database, got {url!r}")
        return url
    rest = url[len("sqlite:"):]
    if rest.startswith("///"):
        path = Path(rest[2:])
    else:
        relative = rest[2:] if rest.startswith("//") else rest
        if not relative:
            raise ConfigError(name, key, f"names no file: {url!r}")
        path = base / relative
    return f"sqlite://{path.resolve()}"
