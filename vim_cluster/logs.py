"""structlog set-up: one event per line, JSON with --log-json, context from contextvars.

The node binds `node_id` once at start and `conn_id`/`user_id` per connection with
`structlog.contextvars.bind_contextvars`; trio copies contextvars into each task it starts, so
every line of a connection's task carries them.
"""

from __future__ import annotations

import logging
import sys

import structlog


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
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
