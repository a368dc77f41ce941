"""The client port's Origin rule (core/origins.py) and its config key."""

from __future__ import annotations

from pathlib import Path

import pytest

from vim_cluster.core.origins import NOT_ALLOWED, UNKNOWN_HOST, allowed, known_host, normal, refusal

from .test_config import config, config_error, write

HOST = "chat.corp.example:8180"  # the Host header a page's WebSocket sends
OWN = ["chat.corp.example"]  # the node's own names (public host, hostname, FQDN)


@pytest.mark.parametrize(("origin", "cluster", "listed", "ok"), [
    (None, [], [], True),  # a native client sends no Origin
    ("https://chat.corp.example:8190", [], [], True),  # the web client served by the node itself
    ("http://CHAT.corp.example", [], [], True),  # any port and scheme of that host name
    ("https://evil.example", [], [], False),  # cross-site WebSocket hijacking
    ("https://evil.example", ["dept-2.corp.example"], [], False),
    ("https://dept-2.corp.example:8192", ["dept-2.corp.example"], [], True),  # another node's page
    ("https://app.corp.example", [], ["https://app.corp.example:443"], True),  # listed (default port)
    ("https://app.corp.example:8443", [], ["https://app.corp.example"], False),  # another port
    ("https://evil.example", [], ["*"], True),  # every origin, as before the check
    ("null", [], [], False),  # a file or a sandboxed frame
    ("https://[::1]:8190", [], [], False),
])
def test_who_may_open_a_client_connection(origin: str | None, cluster: list[str], listed: list[str], ok: bool) -> None:
    assert allowed(origin, HOST, [*OWN, *cluster], listed) is ok


@pytest.mark.parametrize(("host", "names", "listed", "known"), [
    ("127.0.0.1:8180", [], [], True),  # an IP literal: rebinding needs a DNS name
    ("10.1.2.3", [], [], True),
    ("[::1]:8180", [], [], True),
    ("[fe80::1]", [], [], True),
    ("localhost:8180", [], [], True),
    ("LocalHost", [], [], True),
    ("chat.corp.example:8180", ["chat.corp.example"], [], True),  # public host, hostname, FQDN, a live node
    ("CHAT.Corp.Example:443", ["chat.corp.example"], [], True),
    ("app.corp.example", [], ["https://app.corp.example:8443"], True),  # the host of a listed origin
    ("evil.example:8180", ["chat.corp.example"], ["https://app.corp.example"], False),  # DNS rebinding
    ("chat.corp.example.evil.example", ["chat.corp.example"], [], False),
    ("localhost.evil.example", [], [], False),
    ("127.0.0.1.evil.example", [], [], False),
    ("", ["chat.corp.example"], [], False),  # no Host at all
])
def test_which_hosts_a_node_knows(host: str, names: list[str], listed: list[str], known: bool) -> None:
    assert known_host(host, names, listed) is known


def test_dns_rebinding_is_refused_whatever_the_origin() -> None:
    """A page on evil.example resolved to the node's address: its Origin and Host both name
    evil.example. Refused for its Host; the same page of a name the node knows is not."""
    assert refusal("http://evil.example:8180", "evil.example:8180", OWN, []) == UNKNOWN_HOST
    assert refusal("http://evil.example:8180", "evil.example:8180", OWN, ["https://app.corp.example"]) == UNKNOWN_HOST
    assert refusal("https://app.corp.example", "evil.example:8180", OWN, ["https://app.corp.example"]) == UNKNOWN_HOST
    assert refusal("http://evil.example:8180", "evil.example:8180", OWN, ["*"]) is None  # every origin: as asked
    assert refusal(None, "evil.example:8180", OWN, []) is None  # a native client: no Origin, no browser
    assert refusal("http://evil.example:8180", "chat.corp.example:8180", OWN, []) == NOT_ALLOWED
    assert refusal("http://127.0.0.1:8190", "127.0.0.1:8180", [], []) is None  # the web client by address
    assert refusal("http://localhost:8190", "localhost:8180", [], []) is None  # and by localhost
    assert refusal("https://app.corp.example", "chat.corp.example", OWN, ["https://app.corp.example"]) is None


def test_an_ipv6_host_matches_its_own_pages() -> None:
    assert allowed("https://[::1]:8190", "[::1]:8180", [], []) and normal("HTTPS://[::1]") == "https://[::1]:443"


def test_allowed_origins_are_read_and_checked(tmp_path: Path) -> None:
    from vim_cluster.config import load_config

    loaded = load_config(write(tmp_path, config(websocket={"allowed-origins": ["https://app.corp.example", "*"]})))
    assert loaded.websocket.allowed_origins == ("https://app.corp.example", "*")
    assert load_config(write(tmp_path, config())).websocket.allowed_origins == ()
    error = config_error(write(tmp_path, config(websocket={"allowed-origins": ["app.corp.example"]})))
    assert error.key == "vim.websocket.allowed-origins" and "scheme://host[:port]" in error.problem
