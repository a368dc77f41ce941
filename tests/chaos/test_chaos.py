"""The chaos suite's CI run: >= 60 s of steady cross-node, group and offline traffic under >= 5
seeded random faults (tests/chaos/chaos.py says which and how it counts). The seed is printed;
VIM_CHAOS_SEED=N replays a schedule (`scripts/chaos.sh --duration S --seed N` for a long run);
the cluster has an active and a standby master (VIM_CHAOS_MASTERS=1: one master).
A run that finds something keeps its logs and arrivals.json outside pytest's temp folders
(rotated away by later runs) and prints where.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from .chaos import run_chaos, seed_from_env
from .explain import explain

pytestmark = pytest.mark.timeout(300)
DURATION_S = 60.0
MIN_FAULTS = 5
MASTERS = int(os.environ.get("VIM_CHAOS_MASTERS", "2"))  # 2: an active and a standby master


async def test_chaos_short_schedule_loses_nothing_and_keeps_every_senders_order(tmp_path: Path) -> None:
    seed = seed_from_env()
    print(f"\nchaos seed {seed} (replay: VIM_CHAOS_SEED={seed} VIM_CHAOS_MASTERS={MASTERS} pytest tests/chaos)")
    report = await run_chaos(tmp_path / "chaos", seed, DURATION_S, min_faults=MIN_FAULTS, masters=MASTERS)
    if not report.ok or report.findings:
        kept = Path(tempfile.gettempdir()) / f"vim-chaos-seed{seed}-{time.strftime('%H%M%S')}"
        shutil.copytree(report.folder, kept, ignore=shutil.ignore_patterns("*.db*"))
        report.folder = kept
        print(explain(kept))
    print(report.table())
    assert report.duration >= DURATION_S and len(report.faults) >= MIN_FAULTS, report.table()
    assert report.acked > 0 and report.delivered == report.expected - len(report.lost)
    assert not report.lost, f"seed {seed}: acked but never delivered\n{report.table()}"
    assert not report.out_of_order, f"seed {seed}: out of order\n{report.table()}"
    assert not report.cid_reused, f"seed {seed}: one cid, two ids\n{report.table()}"
    assert not report.findings, f"seed {seed}\n{report.table()}"
