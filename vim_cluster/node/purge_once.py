"""`vim-cluster purge`: one retention purge now, from an operator's shell, under the same lock."""

from __future__ import annotations

import trio

from .. import wiring
from ..config import NodeConfig
from .app import wall_clock_ms
from .blocking import BlockingRunner
from .retention import Purger, PurgeReport


async def purge_now(config: NodeConfig) -> PurgeReport | None:
    """Runs the purge of CONFIG's settings now; None if another process holds the lock."""
    registry = await trio.to_thread.run_sync(wiring.open_registry, config, False)
    store = await trio.to_thread.run_sync(wiring.open_messages, config)
    try:
        purger = Purger(store, registry, BlockingRunner("purge", 1), BlockingRunner("redis", 1), config.message,
                        wall_clock_ms)
        return await purger.check(force=True)
    finally:
        await trio.to_thread.run_sync(store.close)
        await trio.to_thread.run_sync(registry.close)
