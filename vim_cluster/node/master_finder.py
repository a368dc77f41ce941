"""Where the active master is, for a node that links to it (a slave or a standby).

Rules:
- Redis names the active master (its node id, published forward URL and epoch). A node
  links to it through a `master-url` candidate known (from an earlier handshake) to reach that
  node, else through a candidate not tried yet (the first start: a candidate may be a proxy or
  a name only this host resolves), else through the URL the master published.
- When Redis names no live master (or does not answer), the candidates are tried in turn:
  `master-url` is the fallback.
- A link is refused when its master's epoch is older than the newest the node knows (the
  Fence; ForwardConnection checks every frame): a superseded master is never followed.
- A linked node checks Redis every `follow_s` (Tunables.master_follow_s); when it names another node with a newer epoch the
  link is dropped and the new master is followed (`wait_superseded`), and a node waiting to
  retry retries at once (`wait_retry`).
"""

from __future__ import annotations

import attrs
import structlog
import trio

from ..core.mastership import Fence, MasterView
from ..ports import Registry
from ..tunables import DEFAULTS
from .blocking import BlockingRunner
from .mastership import read_master

log = structlog.get_logger()


@attrs.define
class MasterFinder:
    registry: Registry
    runner: BlockingRunner
    candidates: tuple[str, ...]
    fence: Fence
    reaches: dict[str, str] = attrs.Factory(dict)  # candidate URL -> node id its master said it was
    view: MasterView | None = None  # the last look at Redis
    tried: set[str] = attrs.Factory(set)  # candidates tried while Redis named a live master
    _turn: int = 0
    follow_s: float = attrs.field(default=DEFAULTS.master_follow_s, kw_only=True)

    async def look(self) -> MasterView | None:
        self.view = await read_master(self.registry, self.runner)
        if self.view is not None and self.view.alive:
            self.fence.learn(self.view.epoch)
        return self.view

    async def locate(self) -> str:
        """The URL to try next for the active master."""
        view = await self.look()
        if view is not None and view.alive:
            known = [url for url in self.candidates if self.reaches.get(url) == view.node_id]
            untried = [url for url in self.candidates if url not in self.reaches and url not in self.tried]
            if known:
                return known[0]
            if untried:
                self.tried.add(untried[0])
                return untried[0]
            if view.forward_url:
                return view.forward_url
        if not self.candidates:
            if view is not None and view.forward_url:
                return view.forward_url  # a standby without candidates: the last one published
            raise LookupError("no live master in Redis and no vim.cluster.master-url candidates")
        url = self.candidates[self._turn % len(self.candidates)]
        self._turn += 1
        return url

    def linked(self, url: str, master_id: str, epoch: int) -> None:
        """A master of `epoch` (not older than the fence: ForwardConnection checked) answered at
        `url`: remember whose it is."""
        self.reaches[url] = master_id
        self.fence.learn(epoch)

    def superseded(self, master_id: str, epoch: int) -> bool:
        view = self.view
        return view is not None and view.alive and view.node_id != master_id and view.epoch > epoch

    async def wait_superseded(self, master_id: str, epoch: int) -> None:
        """Returns once Redis names another live master with a newer epoch."""
        while not self.superseded(master_id, epoch):
            await trio.sleep(self.follow_s)
            await self.look()
        log.warning("master_superseded", old=master_id, old_epoch=epoch,
                    new=self.view.node_id if self.view else None, epoch=self.view.epoch if self.view else None)

    async def wait_retry(self, delay: float) -> None:
        """Waits `delay` before the next attempt, less if meanwhile a master took the lease
        (Redis names a live master of a newer epoch than at the start of the wait)."""
        before = self.view.epoch if self.view is not None else 0
        with trio.move_on_after(delay):
            while True:
                await trio.sleep(min(self.follow_s, delay))
                view = await self.look()
                if view is not None and view.alive and view.epoch > before:
                    return
