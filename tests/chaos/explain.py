"""Explains a chaos run's findings from its arrivals.json: every lost and every out-of-order
delivery grouped by (sender@node -> recipient@node) and by what was going on when the message
was acked. `python -m tests.chaos.explain RUN_FOLDER` (the folder the run printed as `logs:`).

The causes, checked in this order for a message acked at time t:
- "sender's node SIGKILLed with it in flight": a kill of the sender's node came between the
  ack of the sender's previous message and this one's (it was stored, the ack was lost, the
  retry with the same cid got the ack);
- "recipient's node restarted, its link not yet up": t falls between the restart of the
  recipient's node and the moment every node was healthy again (+1 s);
- "relinking after FAULT": t falls between another fault's repair and every node healthy;
- "other (after FAULT)": none of these; the last fault before t is named.
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path
from typing import Any


def cause(faults: list[dict[str, Any]], sender_home: str, recipient_home: str, acked_at: list[float], i: int) -> str:
    t = acked_at[i]
    if i > 0 and any(acked_at[i - 1] <= f["at"] <= t and f["kind"].startswith("kill") and f["target"] == sender_home
                     for f in faults):
        return "sender's node SIGKILLed with it in flight"
    for f in faults:
        if f["repaired"] - 0.5 <= t <= f["healthy"] + 1.0:
            if f["kind"].startswith("kill") and f["target"] == recipient_home:
                return "recipient's node restarted, its link not yet up"
            return f"relinking after {f['kind']} {f['target']}"
    before = [f for f in faults if f["at"] <= t]
    return f"other (after {before[-1]['kind']} {before[-1]['target']})" if before else "other"


def explain(folder: Path) -> str:
    data = json.loads((folder / "arrivals.json").read_text())
    faults = data["faults"]
    lost: collections.Counter[tuple[str, str]] = collections.Counter()
    late: collections.Counter[tuple[str, str]] = collections.Counter()
    example: dict[tuple[str, str, str], str] = {}
    for s_name, sender in data["senders"].items():
        ids = [m for m, _ in sender["acked"]]
        acked_at = [t for _, t in sender["acked"]]
        index = {m: i for i, m in enumerate(ids)}
        for u_name, user in data["users"].items():
            arrived = {a[0]: a for a in user["arrivals"]}
            if u_name == s_name or not arrived.keys() & index.keys():
                continue  # not one of this sender's recipients (a catch-up may echo its own)
            pair = f"{s_name}@{sender['home']} -> {u_name}@{user['home']}"
            for i, m in enumerate(ids):
                if m not in arrived:
                    key = (pair, cause(faults, sender["home"], user["home"], acked_at, i))
                    lost[key] += 1
                    example.setdefault(("lost", *key), f"id {m} acked at {acked_at[i]:.2f} s")
            highest = -1
            for a in (a for a in user["arrivals"] if a[0] in index):
                i = index[a[0]]
                if i < highest:
                    key = (pair, cause(faults, sender["home"], user["home"], acked_at, i))
                    late[key] += 1
                    example.setdefault(("late", *key), f"id {a[0]} acked at {acked_at[i]:.2f} s, arrived "
                                                       f"{a[1]:.2f} s ({'offline replay' if a[3] else 'live'})")
                highest = max(highest, i)
    lines = [f"seed {data['seed']}; times are seconds since the traffic started"]
    for title, counts, tag in (("lost", lost, "lost"), ("out of order", late, "late")):
        lines.append(f"{title}: {sum(counts.values())}")
        lines += [f"  {n:>5}  {pair}: {why}; e.g. {example[(tag, pair, why)]}"
                  for (pair, why), n in sorted(counts.items())]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "arrivals.json").exists():
        sys.exit("usage: python -m tests.chaos.explain RUN_FOLDER (the folder with arrivals.json)")
    print(explain(Path(sys.argv[1])))
