"""Which earlier sessions a new login replaces (V-IM's mutual exclusion per client type)."""

from __future__ import annotations

from collections.abc import Iterable

from ..ports import Route


def replaced_sessions(routes: Iterable[Route], new_session_id: str, client: str) -> list[Route]:
    """Every other session of the same client type: each gets other-login and is closed.

    Sessions of other client types stay (multi-device).
    """
    return [r for r in routes if r.client == client and r.session_id != new_session_id]
