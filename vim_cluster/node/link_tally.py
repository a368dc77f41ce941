"""What both ends of the forward channel (the master's MasterRelay, a slave's SlaveLink) do alike
with a link's own events, the ones about the link rather than its packets: hand the fencing
events to the node's watcher, count refused frames and why links ended, and log the fencing.
Each owner acts on an EpochRaised itself afterwards (a master reports it, a slave follows it)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Literal

import attrs
import structlog

from ..protocol.forward_connection import EndReason, EpochRaised, Event, Fenced, LinkEnded

log = structlog.get_logger()


@attrs.define(eq=False)
class LinkTally:
    """One owner's count over all its links, kept across reconnects."""

    watch: Callable[[Event], None]  # sees every EpochRaised and Fenced (the fence, the master lease, metrics)
    far_end: Literal["peer", "master"]  # the log field that names the other side
    ended: Counter[EndReason] = attrs.Factory(Counter)  # why links ended, refusals included
    fenced: int = 0  # frames refused for an older epoch

    def note(self, event: Event) -> None:
        """Passes on, counts and logs `event` if it is about the link; other events are left alone."""
        if isinstance(event, EpochRaised | Fenced):
            self.watch(event)
        if isinstance(event, Fenced):
            self.fenced += 1
            log.warning("forward_frame_fenced", **{self.far_end: event.peer}, frame_epoch=event.frame_epoch,
                        known_epoch=event.known_epoch)
        elif isinstance(event, LinkEnded):
            self.ended[event.reason] += 1
