"""When the nightly purge is due and what it removes: pure decisions, time passed in.

Rules:
- The purge runs once per UTC day, at or after `purge-hour`; the day's stamp (yyyyMMdd) is
  recorded when a run finishes, so a node that checks later that day skips it, and a run
  that crashed is resumed by the next check (by any node).
- Messages older than `retention-days` go (with their offline rows); offline rows older than
  `offline-retention-days` go while the messages stay in history; MongoDB's daily raw frame
  logs go whole once their whole day is older than `retention-days`.
- "Older" is by message id (snowflakes are time-ordered): an index range on every backend.
"""

from __future__ import annotations

import datetime as dt

import attrs

from ..ids import first_id_at
from ..model import MessageId

DAY_MS = 86_400_000


@attrs.frozen
class PurgePlan:
    messages_before: MessageId | None  # None: keep messages forever
    pending_before: MessageId | None  # None: offline rows wait forever
    logs_before_day: str | None  # yyyyMMdd; None: keep frame logs

    @property
    def empty(self) -> bool:
        return self.messages_before is None and self.pending_before is None


def day_of(now_ms: int) -> str:
    """The UTC day (yyyyMMdd) of a wall-clock millisecond."""
    return dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC).strftime("%Y%m%d")


def due_day(now_ms: int, purge_hour: int, last_done: str | None) -> str | None:
    """Today's stamp if today's run is due (past the hour, not yet done), else None."""
    now = dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC)
    today = now.strftime("%Y%m%d")
    if now.hour < purge_hour or last_done == today:
        return None
    return today


def plan(now_ms: int, retention_days: int | None, offline_days: int | None) -> PurgePlan:
    """What a run at `now_ms` removes."""
    messages_before = pending_before = logs_before = None
    if retention_days is not None:
        cutoff = now_ms - retention_days * DAY_MS
        messages_before = MessageId(first_id_at(cutoff))
        logs_before = day_of(cutoff)  # that day still holds frames younger than the cutoff
    if offline_days is not None:
        pending_before = MessageId(first_id_at(now_ms - offline_days * DAY_MS))
    return PurgePlan(messages_before, pending_before, logs_before)
