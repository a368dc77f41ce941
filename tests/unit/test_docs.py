"""The docs say what the code does: every wire code, error kind, close code, config key, CLI
command and option, and metric of the code is in docs/protocol.md or docs/operations.md, the
tables that list closed sets list nothing else, the config example loads, and every link of
README.md and docs/*.md stays inside the repository and lands on a file and heading that exist.

Each check reads the code's own tables (codec, errors, config schema, argparse parser, metrics
registry), so a new code, key, command or metric fails here until it is documented.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from prometheus_client.parser import text_string_to_metric_families

from vim_cluster import cli, config
from vim_cluster.core.mastership import Fence
from vim_cluster.errors import CloseCode, ErrorKind
from vim_cluster.node.mastership import MasterMetrics
from vim_cluster.node.metrics import NodeMetrics
from vim_cluster.node.retention import PurgeMetrics
from vim_cluster.protocol import codec
from vim_cluster.protocol import frames as f

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PROTOCOL = DOCS / "protocol.md"
OPERATIONS = DOCS / "operations.md"

# Docs that other branches write; linked already. The lead removes each name once its file is
# merged (test_pending_docs_are_still_missing fails until then).
PENDING: set[str] = set()


# --- reading markdown ---------------------------------------------------------------------------


def _read(path: Path) -> str:
    """The file's text without HTML comments (notes to the lead document nothing)."""
    return re.sub(r"<!--.*?-->", "", path.read_text(encoding="utf-8"), flags=re.S)


def _code(text: str) -> str:
    """Everything inside code spans and fenced code blocks, one piece per line."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    return "\n".join(fenced + re.findall(r"`([^`\n]+)`", prose))


def _mentions(code: str, name: str) -> bool:
    """`name` as a whole token (not a prefix of a longer name) in code text."""
    return re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", code) is not None


def _section(text: str, heading: str) -> str:
    """The text under the heading that starts with `heading`, up to the next heading of its level."""
    match = re.search(rf"^(#+) {re.escape(heading)}.*$", text, flags=re.M)
    assert match, f"no heading {heading!r}"
    level = len(match.group(1))
    rest = text[match.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, flags=re.M)
    return rest[: end.start()] if end else rest


def _first_column(section: str) -> list[str]:
    """The code spans in the first cell of each table row (header and rule rows skipped)."""
    cells: list[str] = []
    for line in section.splitlines():
        if not line.startswith("|") or re.match(r"^\|[\s:|-]+\|$", line):
            continue
        first = line.split("|")[1]
        cells += re.findall(r"`([^`]+)`", first)
    return cells


def _table_names(path: Path, heading: str) -> list[str]:
    names = _first_column(_section(_read(path), heading))
    assert names, f"{path.name} {heading!r}: no table with `names` in its first column"
    return names


# --- the code's own tables -----------------------------------------------------------------------


def _reply_codes() -> set[str]:
    found: set[str] = set()
    stack: list[type] = [f.Reply]
    while stack:
        cls = stack.pop()
        stack += cls.__subclasses__()
        if "CODE" in vars(cls):
            found.add(vars(cls)["CODE"])
    return found


def _close_codes_used() -> set[int]:
    """CloseCode's members, and every close code the source passes as a literal."""
    used = {int(c) for c in CloseCode}
    for source in (ROOT / "vim_cluster").rglob("*.py"):
        used |= {int(n) for n in re.findall(r"aclose\(\s*(\d{4})", _read(source))}
    return used


def _schema_keys(schema: dict[str, Any], prefix: str) -> Iterator[str]:
    for name, value in schema.items():
        if isinstance(value, dict):
            yield from _schema_keys(value, f"{prefix}.{name}")
        else:
            yield f"{prefix}.{name}"


def _commands(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{path} {name}", sub
                yield from _commands(sub, f"{path} {name}")


def _long_options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"}


def _metric_names() -> tuple[set[str], set[str]]:
    """(names the docs must list, every name a scrape can show). A histogram is listed by its
    family name; counters and gauges by each sample name (`_total`, `_created`)."""
    metrics = NodeMetrics("docs-test")
    metrics.relay_latency.observe(0.001)
    purge = PurgeMetrics(metrics.registry)  # registered by the retention job on every node
    purge.removed.labels(kind="messages").inc(0)
    MasterMetrics(metrics.registry, Fence())  # registered on every node (node/mastership.py)
    metrics.certificate_ends(0)  # registered on nodes with TLS
    required: set[str] = set()
    exported: set[str] = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        samples = {s.name for s in family.samples}
        exported |= samples | {family.name}
        required |= {family.name} if family.type == "histogram" else samples
    return required, exported


# --- protocol.md ---------------------------------------------------------------------------------


def test_request_table_lists_exactly_the_codec_codes() -> None:
    documented = _table_names(PROTOCOL, "2.1 Requests")
    assert "message" in codec.CODES and len(codec.CODES) >= 13
    assert sorted(documented) == sorted(codec.CODES)


def test_reply_table_lists_exactly_the_reply_codes() -> None:
    codes = _reply_codes()
    assert {"ack", "message", "error", "other-login"} <= codes
    assert sorted(set(_table_names(PROTOCOL, "2.2 Frames from the node"))) == sorted(codes)


def test_error_table_lists_exactly_the_error_kinds() -> None:
    documented = _table_names(PROTOCOL, "3. Errors")
    assert sorted(documented) == sorted(k.value for k in ErrorKind)


def test_close_code_table_lists_exactly_the_close_codes_used() -> None:
    used = _close_codes_used()
    assert {1001, 1008, 4001, 4004} <= used
    documented = _table_names(PROTOCOL, "4. Close codes")
    assert all(d.isdigit() for d in documented), documented
    assert sorted(int(d) for d in documented) == sorted(used)


def test_every_config_key_is_documented() -> None:
    keys = list(_schema_keys(config.SCHEMA, "vim"))
    assert "vim.websocket.max-frame" in keys and len(keys) >= 17
    code = _code(_section(_read(PROTOCOL), "5. Configuration"))
    missing = [k for k in keys if not _mentions(code, k)]
    assert not missing, f"config keys missing from docs/protocol.md §5: {missing}"


def _load_example(tmp_path: Path, text: str) -> config.NodeConfig:
    """Loads a config example with the files it names made in `tmp_path`: the secret, a real
    certificate for its public-host (TLS files are loaded), its password files."""
    document = yaml.safe_load(text)["vim"]
    websocket = document["websocket"]
    named = [document["cluster"]["secret-file"], *(websocket.get("tls") or {}).values(),
             *(websocket[k] for k in ("tls-cert", "tls-key") if k in websocket),
             *(v for section in ("redis", "store") for k, v in document[section].items() if k.endswith("password-file"))]
    absolute = [name for name in named if Path(name).is_absolute()]
    assert not absolute, f"the example names files by absolute paths (this test would write them there): {absolute}"
    secret = tmp_path / document["cluster"]["secret-file"]
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text("x" * 32)
    tls = document["websocket"]["tls"]
    authority = trustme.CA()
    issued = authority.issue_cert(document["websocket"]["public-host"])
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / tls["cert-file"]))
    issued.private_key_pem.write_to_path(str(tmp_path / tls["key-file"]))
    authority.cert_pem.write_to_path(str(tmp_path / tls["ca-file"]))
    for section in ("redis", "store"):
        for key, name in document[section].items():
            if key.endswith("password-file"):
                (tmp_path / name).write_text("a-password\n")
    file = tmp_path / "node.yaml"
    file.write_text(text, encoding="utf-8")
    return config.load_config(file)  # raises ConfigError naming the key if the example is stale


def test_the_config_example_loads(tmp_path: Path) -> None:
    blocks = re.findall(r"^```yaml\n(.*?)^```", _section(_read(PROTOCOL), "5. Configuration"), re.S | re.M)
    assert len(blocks) == 1, "§5 holds one ```yaml example"
    loaded = _load_example(tmp_path, blocks[0])
    assert loaded.node_id == yaml.safe_load(blocks[0])["vim"]["cluster"]["node-id"]
    assert loaded.client_url == "wss://dept-1.example.internal:8180/"


def test_the_shared_servers_example_loads_and_advertises_its_public_host(tmp_path: Path) -> None:
    """README points to node-configs/shared-servers.yaml.example for shared servers: it had the
    old TLS keys, passwords in the URLs and no public-host (bound to 0.0.0.0, the node then
    advertised 127.0.0.1 to the other hosts and the clients)."""
    lines = (ROOT / "node-configs" / "shared-servers.yaml.example").read_text(encoding="utf-8").splitlines()
    start = lines.index("# vim:")
    loaded = _load_example(tmp_path, "\n".join(line.removeprefix("# ") for line in lines[start:]) + "\n")
    assert (loaded.node_id, loaded.cluster.node_type) == ("dept-sales", config.NodeType.SLAVE)
    assert loaded.client_url == "wss://dept-sales.example.internal:8180/"
    assert loaded.websocket.tls_ca is not None and ":a-password@" in loaded.store.directory


def test_every_command_and_option_is_documented() -> None:
    parser = cli.build_parser()
    commands = dict(_commands(parser, "vim-cluster"))
    assert {"vim-cluster run", "vim-cluster user add", "vim-cluster bench"} <= set(commands)
    text = _read(PROTOCOL)
    code = _code(_section(text, "6. Command line"))
    missing = [c for c in commands if not _mentions(code, c)]
    assert not missing, f"commands missing from docs/protocol.md §6: {missing}"
    options = _long_options(parser) | {o for sub in commands.values() for o in _long_options(sub)}
    assert {"--log-json", "--watch", "--config"} <= options
    undocumented = sorted(o for o in options if not _mentions(code, o))
    assert not undocumented, f"options missing from docs/protocol.md §6: {undocumented}"


def test_every_http_path_is_documented() -> None:
    from vim_cluster.node import http

    source = Path(http.__file__).read_text(encoding="utf-8")
    paths = set(re.findall(r'"(/[a-z.]*)"', source))
    assert {"/healthz", "/metrics", "/dashboard"} <= paths
    code = _code(_section(_read(PROTOCOL), "7. HTTP port"))
    missing = [p for p in paths if not re.search(rf"(?<![\w/]){re.escape(p)}(?![\w.])", code)]
    assert not missing, f"HTTP paths missing from docs/protocol.md §7: {missing}"


# --- operations.md -------------------------------------------------------------------------------


def test_every_metric_is_documented_and_the_table_names_only_real_ones() -> None:
    required, exported = _metric_names()
    assert {"vim_connections", "vim_messages_in_total", "vim_relay_latency_seconds"} <= required
    code = _code(_read(OPERATIONS))
    missing = sorted(m for m in required if not _mentions(code, m))
    assert not missing, f"metrics missing from docs/operations.md: {missing}"
    table = {re.match(r"[a-z_]+", n).group(0) for n in _table_names(OPERATIONS, "Metrics")}  # type: ignore[union-attr]
    assert table <= exported, f"docs/operations.md lists metrics the code does not export: {table - exported}"


def test_alert_expressions_use_only_real_metrics() -> None:
    _, exported = _metric_names()
    section = _section(_read(OPERATIONS), "Alerts")
    named = set(re.findall(r"\bvim_[a-z_]+", section))
    assert named, "the alert table names no vim_ metric"
    histogram_series = {f"{n}_bucket" for n in exported}
    assert named <= exported | histogram_series, named - exported - histogram_series


# --- links ---------------------------------------------------------------------------------------


def _doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", _read(path), flags=re.S | re.M)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("doc", _doc_files(), ids=lambda p: p.name)
def test_no_path_into_shared(doc: Path) -> None:
    text = _read(doc)
    for outside in ("../shared", "shared/PROTOCOL", "/work/"):
        assert outside not in text, f"{doc.name} points outside the repository: {outside!r}"


@pytest.mark.parametrize("doc", _doc_files(), ids=lambda p: p.name)
def test_links_stay_in_the_repo_and_land(doc: Path) -> None:
    text = re.sub(r"^```.*?^```", "", _read(doc), flags=re.S | re.M)
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", link):
            continue  # http(s), mailto
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        assert path.is_relative_to(ROOT), f"{doc.name}: {link} leaves the repository"
        relative = path.relative_to(ROOT).as_posix()
        if relative in PENDING:
            continue
        assert path.exists(), f"{doc.name}: {link} names a missing file"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path), f"{doc.name}: {link}: no such heading in {relative}"


def test_readme_links_the_docs() -> None:
    text = _read(ROOT / "README.md")
    for name in ("protocol.md", "operations.md", "performance.md", "security.md", "data-lifecycle.md"):
        assert f"](docs/{name})" in text, f"README.md does not link docs/{name}"


def test_pending_docs_are_still_missing() -> None:
    """Once a pending doc is merged, its name must leave PENDING so its links are checked."""
    merged = sorted(p for p in PENDING if (ROOT / p).exists())
    assert not merged, f"{merged} exist now: remove them from PENDING in {Path(__file__).name}"
