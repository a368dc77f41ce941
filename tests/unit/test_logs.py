"""The console log renders values from outside without their control characters (vim_cluster/logs.py)."""

from __future__ import annotations

import structlog

from vim_cluster.logs import escape_controls


def test_console_log_lines_carry_no_escape_sequence_a_client_chose() -> None:
    """Attack: a client connects with `?client=%1B]0;...%07%1B[2J` (or a forward peer says hello
    with such a node id); the node logs it (`session_opened client=...`). Its escape sequences
    reached the terminal of an operator reading the log. Now they are written as escapes."""
    assert escape_controls in structlog.get_config()["processors"]  # tests log as the node does (console)
    event = escape_controls(None, "info", {"event": "session_opened", "client": "web\x1b]0;pwned\x07\x1b[2J",
                                           "conn_id": 3, "origin": "https://chat.corp.example"})
    line = structlog.dev.ConsoleRenderer(colors=False)(None, "info", event)
    assert isinstance(line, str) and line.isprintable()
    assert "client=web\\x1b]0;pwned\\x07\\x1b[2J" in line and "origin=https://chat.corp.example" in line
