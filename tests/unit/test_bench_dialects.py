"""The load generator's wire formats (vim_cluster.bench and scripts/bench_peers.py), driven
without sockets: what each system's frames mean to the benchmark."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from vim_cluster.bench import Event, VimSpeaker

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("bench_peers", ROOT / "scripts" / "bench_peers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_peers"] = module
    spec.loader.exec_module(module)
    return module


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
