"""The load generator's wire formats (vim_cluster.bench and scripts/bench_peers.py), driven
without sockets: what each system's frames mean to the benchmark."""

import argparse
import json
from pathlib import Path

import pytest

from vim_cluster.bench import Event, VimSpeaker, cpu_figures

from ..support import ROOT, script_module


@pytest.fixture(scope="module")
def peers():
    return script_module("bench_peers.py")


def test_vim_speaker_reads_ack_error_and_message_and_confirms() -> None:
    speaker = VimSpeaker()
    sent = json.loads(speaker.message("s0-1", "42", "friend", "hi"))
    assert sent == {"code": "message", "message": {"cid": "s0-1", "chatId": "42", "type": "friend",
                                                   "messageType": "text", "content": "hi"}}
    assert speaker.events('{"code":"ack","message":{"cid":"s0-1","id":"9"}}') == [Event("ack", "s0-1")]
    assert speaker.events('{"code":"error","message":{"error":"rate-limited"}}') == [Event("error", "rate-limited")]
    message = {"code": "message", "message": {"cid": "s0-1", "id": "9", "type": "friend"}}
    assert speaker.events(json.dumps(message)) == [Event("message", "s0-1", "9", True)]
    group = {"code": "message", "message": {"cid": "s0-2", "id": "10", "type": "group"}}
    assert speaker.events(json.dumps(group)) == [Event("message", "s0-2", "10", False)]
    assert speaker.events('{"code":"sync-done","message":{}}') == []
    assert json.loads(speaker.received(["9"]) or "") == {"code": "received", "message": {"ids": ["9"]}}


def test_socketio_speaker_numbers_acks_answers_pings_and_reads_events(peers) -> None:
    speaker = peers.SocketIOSpeaker()
    first, second = speaker.message("a", "r1", "friend", "x"), speaker.message("b", "r1", "friend", "x")
    assert first == '421["send", {"to": "r1", "cid": "a", "content": "x"}]'
    assert second.startswith("422[")
    assert speaker.events("2") == [Event("reply", "3")]
    assert speaker.events('4312["a"]') == [Event("ack", "a")]
    assert speaker.events('42["msg",{"to":"r1","cid":"a","content":"x"}]') == [Event("message", "a", "a")]
    assert speaker.events('42["other",{}]') == []
    assert speaker.events(b'44{"message":"no"}') == [Event("error", "connect_error")]
    assert speaker.received(["a"]) is None


def test_centrifugo_speaker_matches_replies_to_commands_and_reads_pushes(peers) -> None:
    speaker = peers.CentrifugoSpeaker()
    publish = json.loads(speaker.message("a", "r1", "friend", "x"))
    assert publish["publish"] == {"channel": "r1", "data": {"cid": "a", "content": "x"}}
    failed = json.loads(speaker.message("b", "r1", "friend", "x"))
    replies = "\n".join([json.dumps({"id": publish["id"], "publish": {}}),
                         json.dumps({"id": failed["id"], "error": {"code": 103, "message": "permission denied"}}),
                         "{}",
                         json.dumps({"push": {"channel": "r1", "pub": {"data": {"cid": "a", "content": "x"}}}}),
                         json.dumps({"id": 999, "publish": {}})])
    assert speaker.events(replies) == [Event("ack", "a"), Event("error", "103"), Event("reply", "{}"),
                                       Event("message", "a", "a")]


def test_cpu_figures_per_delivered_message_and_in_cores() -> None:
    figures = cpu_figures(wall_s=8.0, generator_cpu_s=1.6, server_cpu_s=4.0, delivered=8000)
    assert figures == {"cpu_window_s": 8.0, "generator_cpu_s": 1.6, "generator_cpu_us_per_delivered": 200.0,
                       "server_cpu_s": 4.0, "server_cpu_us_per_delivered": 500.0, "server_cores": 0.5}
    # no server pids: only the generator's figures; nothing delivered: no per-message figure
    assert cpu_figures(2.0, 0.5, None, 0) == {"cpu_window_s": 2.0, "generator_cpu_s": 0.5}


def test_bench_run_table_has_the_cores_and_generator_columns() -> None:
    bench_run = script_module("bench_run.py", "bench_run_table")
    row = {"profile": "sqlite", "scenario": "cross-node", "rate": 1000.0, "delivered_per_s": 999.0,
           "server_cpu_us_per_delivered": 1100.0, "server_cores": 1.1, "generator_cpu_us_per_delivered": 190.0}
    head, _, line = (cells(text) for text in bench_run.table([row]).splitlines())
    cells_by_column = dict(zip(head, line, strict=True))
    assert cells_by_column["server cores"] == "1.1" and cells_by_column["generator CPU µs/delivered"] == "190.0"


def test_bench_run_starts_a_cluster_outside_the_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m` (how `vim-cluster up` starts the nodes) puts the working directory first on
    sys.path: from this checkout's root, an A/B's other tree would run this tree's code."""
    bench_run = script_module("bench_run.py", "bench_run_cwd")
    started: list[dict] = []

    def popen(command: list[str], **options: object) -> None:
        started.append({"command": command, **options})
        raise RuntimeError("stop here")

    monkeypatch.setattr(bench_run.subprocess, "run", lambda *args, **options: None)
    monkeypatch.setattr(bench_run.subprocess, "Popen", popen)
    monkeypatch.chdir(ROOT)
    with pytest.raises(RuntimeError, match="stop here"):
        with bench_run.cluster("other", tmp_path, {"directory": "d", "messages": "m"}, ["/other/vim-cluster"]):
            pass
    [up] = started
    assert up["command"][0] == "/other/vim-cluster" and "up" in up["command"]
    assert up["cwd"] == tmp_path


def cells(line: str) -> list[str]:
    """A markdown table row's cells."""
    return [cell.strip() for cell in line.split("|")[1:-1]]


def _run(system: str, rate: object, delivered_per_s: float, cores: float, generator: float) -> dict:
    return {"system": system, "rate": rate, "delivered": 1000, "delivered_per_s": delivered_per_s, "p99_ms": 5.0,
            "server_cpu_us_per_delivered": cores * 1e6 / delivered_per_s, "server_cores": cores,
            "generator_cpu_us_per_delivered": generator}


def test_peers_report_has_generator_cpu_and_cores_at_the_fixed_rate(peers) -> None:
    args = argparse.Namespace(rate=0, cores_rate=1000, repeat=3)
    assert peers.rates(args) == [0, 1000]
    assert peers.rates(argparse.Namespace(rate=1000, cores_rate=1000)) == [1000]
    assert peers.rates(argparse.Namespace(rate=0, cores_rate=0)) == [0]
    runs = {"vim-cluster": [_run("vim-cluster", "max", v, 1.0, 190) for v in (3000, 3600, 3400)],
            "python-socketio": [_run("python-socketio", "max", v, 1.0, 180) for v in (4500, 4600, 4700)]}
    fixed = {"vim-cluster": [_run("vim-cluster", 1000, 999, c, 200) for c in (1.2, 0.9, 1.0)],
             "python-socketio": [_run("python-socketio", 1000, 999, c, 185) for c in (0.5, 0.4, 0.3)]}
    text = peers.report(runs, fixed, args)
    main, cores = text.split("cores used at 1,000 msg/s")
    head, _, *rows = [cells(line) for line in main.split("every run")[0].splitlines() if line.startswith("|")]
    assert "server cores" in head and "generator CPU µs/delivered" in head
    assert [row[head.index("delivered/s")] for row in rows] == ["3400", "4600"]  # medians of the main runs
    head, _, *rows = [cells(line) for line in cores.split("every run")[0].splitlines() if line.startswith("|")]
    assert head == ["system", "rate", "delivered/s", "p99 ms", "server CPU µs/delivered", "server cores",
                    "generator CPU µs/delivered"]
    by_system = {row[0]: dict(zip(head, row, strict=True)) for row in rows}
    assert by_system["vim-cluster"]["server cores"] == "1.0"  # the median run by cores: of 0.9, 1.0, 1.2
    assert by_system["python-socketio"]["server cores"] == "0.4"
    assert by_system["vim-cluster"]["generator CPU µs/delivered"] == "200"
    assert "server cores at the fixed rate 2.50x" in text
