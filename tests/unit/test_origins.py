"""The client port's Origin rule (core/origins.py) and its config key."""

from __future__ import annotations

from pathlib import Path

import pytest

from vim_cluster.core.origins import allowed, normal

from .test_config import config, config_error, write

HOST = "chat.corp.example:8180"  # the Host header a page's WebSocket sends


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
    assert allowed(origin, HOST, cluster, listed) is ok


def test_an_ipv6_host_matches_its_own_pages() -> None:
    assert allowed("https://[::1]:8190", "[::1]:8180", [], []) and normal("HTTPS://[::1]") == "https://[::1]:443"


def test_allowed_origins_are_read_and_checked(tmp_path: Path) -> None:
    from vim_cluster.config import load_config

    loaded = load_config(write(tmp_path, config(websocket={"allowed-origins": ["https://app.corp.example", "*"]})))
    assert loaded.websocket.allowed_origins == ("https://app.corp.example", "*")
    assert load_config(write(tmp_path, config())).websocket.allowed_origins == ()
    error = config_error(write(tmp_path, config(websocket={"allowed-origins": ["app.corp.example"]})))
    assert error.key == "vim.websocket.allowed-origins" and "scheme://host[:port]" in error.problem
