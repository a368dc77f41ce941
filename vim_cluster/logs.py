"""structlog set-up: one event per line, JSON with --log-json, context from contextvars.

The node binds `node_id` once at start and `conn_id`/`user_id` per connection with
`structlog.contextvars.bind_contextvars`; trio copies contextvars into each task it starts, so
every line of a connection's task carries them.

Values come from outside too (a client type, an Origin, a forward peer's node id): the console
renderer gets them with their control characters written as escapes (`\x1b`), so that no one
who can connect writes escape sequences to the terminal of an operator who reads the log (the
JSON renderer escapes them itself).
"""

from __future__ import annotations

import logging
import sys
import unicodedata
from collections.abc import MutableMapping
from typing import Any

import structlog


def escaped(text: str) -> str:
    """`text` with its control characters (Unicode category Cc) written as Python escapes."""
    return "".join(c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) == "Cc" else c
                   for c in text)


def escape_controls(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: string values with control characters get them as escapes."""
    for key, value in event.items():
        if isinstance(value, str) and not value.isprintable():
            event[key] = escaped(value)
    return event


def configure_logging(json: bool = False, level: str = "info") -> None:
    renderer: structlog.types.Processor
    if json:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if json else structlog.processors.StackInfoRenderer(),
            *(() if json else (escape_controls,)),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
