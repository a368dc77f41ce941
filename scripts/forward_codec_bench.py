"""Microbenchmark of the forward channel's packet encoding: one batch of N `message` Deliver
packets, encoded and decoded, plus what the sending node does to put a client frame into a packet
and what the receiving node does to hand it to a text client.

Runs against whichever vim_cluster is importable, so the same script measures an older tree:

    .venv/bin/python scripts/forward_codec_bench.py                      # this tree
    PYTHONPATH=/tmp/old-tree .venv/bin/python scripts/forward_codec_bench.py   # another one

Prints microseconds of CPU time per operation (the median of --repeat timings of --number
loops each).
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit
from typing import Any

from vim_cluster.model import ChatType, Message, MessageId, MessageType, UserId
from vim_cluster.protocol import forward_frames as ff
from vim_cluster.protocol import frames as f
from vim_cluster.protocol.codec import OutFrame

NEW = hasattr(ff, "PeerRole")  # the tuple format (ForwardConnection) or the older map format
if NEW:
    from vim_cluster.node.delivery import ForwardedFrame, frame_json, frame_message_id


def message_frame(n: int) -> OutFrame:
    message = Message(MessageId(7_000_000_000_000 + n), f"cid-{n}", UserId(1001), 2002, ChatType.FRIEND,
                      MessageType.TEXT, f"hello from sender 12, message number {n}", None, 1_764_000_000_000 + n)
    return OutFrame(f.MessageOut(message))


def prepare(frame: OutFrame, n: int) -> Any:
    """The sending node's part: a Deliver packet for one client frame."""
    if NEW:
        return ff.Deliver("dept-1", [2002], frame_json(frame), "s-1", 1_764_000_000_000 + n, frame_message_id(frame))
    return ff.Deliver("dept-1", (2002,), frame.wire_object(), "s-1", 1_764_000_000_000 + n)


def to_text_client(packet: Any) -> Any:
    """The receiving node's part: the frame as a text client gets it."""
    if NEW:
        return ForwardedFrame(packet.frame, packet.message_id).encoded(False)
    return OutFrame(f.RawReply(packet.frame)).encoded(False)


def encode(packets: list[Any]) -> bytes:
    if NEW:
        return ff.encode_frame(ff.Batch(41, 1, packets), 3)
    return ff.encode_frame(ff.Batch(list(enumerate(packets, start=1)), 41))


def decode(data: bytes) -> Any:
    return ff.decode_frame(data)


def timed(fn: Any, number: int, repeat: int) -> float:
    """CPU time (not wall time: a loaded machine preempts) per call, in microseconds."""
    timings = timeit.repeat(fn, number=number, repeat=repeat, timer=time.process_time)
    return statistics.median(timings) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=14, help="Deliver packets per batch (default 14)")
    parser.add_argument("--number", type=int, default=2000, help="loops per timing (default 2000)")
    parser.add_argument("--repeat", type=int, default=15, help="timings; the median is printed (default 15)")
    args = parser.parse_args()
    n = args.packets
    frames = [message_frame(i) for i in range(n)]

    def prep() -> list[Any]:
        # A fresh OutFrame each time: nothing cached from an earlier loop.
        return [prepare(OutFrame(frame.reply), i) for i, frame in enumerate(frames)]

    packets = prep()
    data = encode(packets)
    decoded = decode(data)
    received = decoded[1].packets if NEW else [p for _, p in decoded.items]
    results = {
        "prepare": timed(prep, args.number, args.repeat),
        "encode": timed(lambda: encode(packets), args.number, args.repeat),
        "decode": timed(lambda: decode(data), args.number, args.repeat),
        "to_text": timed(lambda: [to_text_client(p) for p in received], args.number, args.repeat),
    }
    label = "tuples+pre-encoded JSON" if NEW else "maps (attrs.asdict)"
    print(f"forward batch of {n} message packets, {label}: {len(data)} bytes")
    for name, micros in results.items():
        print(f"  {name:8s} {micros:7.1f} us per batch ({micros / n:5.2f} us per packet)")
    hop = results["encode"] + results["decode"]
    print(f"  one hop (encode + decode): {hop:.1f} us; sender prepare + 2 hops + recipient text: "
          f"{results['prepare'] + 2 * hop + results['to_text']:.1f} us")


if __name__ == "__main__":
    main()
