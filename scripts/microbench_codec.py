"""Microbenchmarks of the client codec and the node's metrics (CPU per call, one process).

    .venv/bin/python scripts/microbench_codec.py [--repeat 7] [--number 20000]

Prints µs of CPU (thread time, so a busy machine inflates it less) per call, the median of `--repeat` timings of `--number` calls each, for:
- encode: the three frames of a cross-node message (ack, message, receipt) through
  `codec.encode` (text and binary) and through `OutFrame` as the outbox uses it;
- decode: the `message` and `received` commands in JSON text;
- json libraries on the same objects (stdlib json, orjson, msgspec when installed);
- metrics: what the node counts for one delivered cross-node message.
Run it on two commits to A/B a change; run A and B alternately when the machine is busy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from typing import Any


def use_tree(tree: str) -> None:
    """Import vim_cluster from `tree` (e.g. `git archive` of commit A) instead of the
    editable install."""
    sys.meta_path[:] = [m for m in sys.meta_path if "editable" not in getattr(m, "__module__", "")
                        and "editable" not in getattr(m, "__name__", "")]
    sys.path.insert(0, tree)


if __name__ == "__main__" and "--tree" in sys.argv:
    use_tree(sys.argv[sys.argv.index("--tree") + 1])

from vim_cluster.model import ChatType, Message, MessageId, MessageType, UserId  # noqa: E402
from vim_cluster.protocol import codec  # noqa: E402
from vim_cluster.protocol import frames as f  # noqa: E402

MESSAGE = Message(MessageId(7_212_345_678_901_234), "c-1234", UserId(1_000_000_017), 1_000_000_042,
                  ChatType.FRIEND, MessageType.TEXT, "x" * 100, None, 1_764_500_000_000)
ACK = f.Ack("c-1234", MESSAGE.id, MESSAGE.timestamp)
OUT = f.MessageOut(MESSAGE)
RECEIPT = f.Receipt(MESSAGE.id, MESSAGE.chat_id, 1_000_000_042)
SEND_TEXT = json.dumps({"code": "message", "message": {
    "cid": "c-1234", "chatId": "1000000042", "type": "friend", "messageType": "text", "content": "x" * 100}})
RECEIVED_TEXT = json.dumps({"code": "received", "message": {"ids": [str(MESSAGE.id + n) for n in range(20)]}})


def per_call_us(fn: Callable[[], Any], number: int, repeat: int) -> float:
    times = timeit.repeat(fn, number=number, repeat=repeat, timer=time.thread_time)
    return statistics.median(times) / number * 1e6


def cases() -> dict[str, Callable[[], Any]]:
    out: dict[str, Callable[[], Any]] = {}
    for name, reply in (("ack", ACK), ("message", OUT), ("receipt", RECEIPT)):
        out[f"encode text {name}"] = lambda r=reply: codec.encode(r, False)
        out[f"encode binary {name}"] = lambda r=reply: codec.encode(r, True)
        out[f"OutFrame text {name}"] = lambda r=reply: codec.OutFrame(r).encoded(False)
        out[f"wire dict {name}"] = lambda r=reply: r.wire()
    encode_bytes = getattr(codec, "encode_bytes", None)
    if encode_bytes is not None:
        out["encode_bytes text message"] = lambda: encode_bytes(OUT, False)
    out["decode message"] = lambda: codec.decode(SEND_TEXT)
    out["decode received(20)"] = lambda: codec.decode(RECEIVED_TEXT)
    obj = codec.encode_object(OUT)
    out["json.dumps message obj"] = lambda: json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    out["json.loads send"] = lambda: json.loads(SEND_TEXT)
    try:
        import orjson
    except ImportError:
        pass
    else:
        out["orjson.dumps message obj"] = lambda: orjson.dumps(obj)
        out["orjson.dumps message obj .decode()"] = lambda: orjson.dumps(obj).decode()
        out["orjson.loads send"] = lambda: orjson.loads(SEND_TEXT)
    try:
        import msgspec
    except ImportError:
        pass
    else:
        enc, dec = msgspec.json.Encoder(), msgspec.json.Decoder()
        out["msgspec.encode message obj"] = lambda: enc.encode(obj)
        out["msgspec.decode send"] = lambda: dec.decode(SEND_TEXT)
    out.update(metric_cases())
    out["cross-node message path (codec + metrics)"] = message_path()
    return out


def message_path() -> Callable[[], None]:
    """The codec and metrics work of one cross-node message on its three nodes, as the node
    code calls them today: the sender's node decodes the `message` frame, writes the ack and
    hands the message's wire object to the forward link; the recipient's node writes the
    relayed message, decodes a `received` frame (one id of 10 per message) and hands the
    receipt's object on; the sender's node writes the relayed receipt."""
    from vim_cluster.node.metrics import NodeMetrics

    sender, recipient = NodeMetrics("dept-1"), NodeMetrics("dept-2")
    received = json.dumps({"code": "received", "message": {"ids": [str(MESSAGE.id + n) for n in range(10)]}})
    turn = [0]

    def one_message() -> None:
        codec.decode(SEND_TEXT)
        sender.message_accepted()
        codec.OutFrame(ACK).encoded(False)
        sent = codec.OutFrame(OUT)
        sender.frames_out.inc(0)  # the sender's other sessions
        carried = sent.wire_object()  # to the forward link
        relayed = codec.OutFrame(f.RawReply(carried))
        relayed.encoded(False)
        recipient.frames_out.inc(1)
        recipient.relay_delivered(0.004)
        turn[0] += 1
        if turn[0] % 10 == 0:
            codec.decode(received)
        receipt = codec.OutFrame(RECEIPT)
        recipient.frames_out.inc(0)
        back = codec.OutFrame(f.RawReply(receipt.wire_object()))
        back.encoded(False)
        sender.frames_out.inc(1)
        sender.relay_delivered(0.004)

    return one_message


def metric_cases() -> dict[str, Callable[[], Any]]:
    """One delivered cross-node message as the node counts it: the sender's node accepts it
    and queues its frames, the recipient's node delivers the message, and the receipt comes
    back (frames counted and a relay latency observed on each side)."""
    from vim_cluster.node.metrics import NodeMetrics

    m = NodeMetrics("bench")

    def one_message() -> None:
        m.message_accepted()
        m.frames_out.inc(1)  # the message to the sender's other sessions (0 or more)
        m.frames_out.inc(1)  # recipient's node: the message
        m.relay_delivered(0.004)
        m.frames_out.inc(1)  # recipient's node: other sessions of the recipient
        m.frames_out.inc(1)  # sender's node: the receipt
        m.relay_delivered(0.004)

    return {"metrics per message (7 calls)": one_message, "metrics render": m.render}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7, help="timings per case (median shown)")
    parser.add_argument("--number", type=int, default=20000, help="calls per timing")
    parser.add_argument("--only", default="", help="only cases whose name contains this")
    parser.add_argument("--tree", default="", help="import vim_cluster from this directory (A/B)")
    args = parser.parse_args()
    print(f"# vim_cluster from {codec.__file__}")
    for name, fn in cases().items():
        if args.only and args.only not in name:
            continue
        number = args.number // 100 if name == "metrics render" else args.number
        print(f"{name:40} {per_call_us(fn, number, args.repeat):8.3f} µs", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
