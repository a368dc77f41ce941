"""The per-connection session state machine, without sockets or clocks (PROTOCOL.md §1)."""

from __future__ import annotations

import math

import pytest

from vim_cluster.core.limits import CostBudget, RateWindow
from vim_cluster.errors import ClientError, ErrorKind
from vim_cluster.model import ChatType, MessageType
from vim_cluster.protocol import frames as f
from vim_cluster.protocol.session import REPLAYING, ClientState, Phase
from vim_cluster.tunables import DEFAULTS

ANONYMOUS_OK = [
    f.RawPing(),
    f.Ping(),
    f.Register("alice", "12345678", None),
    f.Login("alice", "x"),
    f.Ready("t", "web", None),
]
NEEDS_AUTH = [
    f.SendMessage("c", 1, ChatType.FRIEND, MessageType.TEXT, "hi", None),
    f.Received((1,)),
    f.Read(1, ChatType.FRIEND, 1),
    f.Recall(1),
    f.History(1, ChatType.FRIEND, None, 50),
    f.Contacts(),
    f.GroupCreate("g", (1,)),
    f.GroupAdd(1, (2,)),
    f.GroupRemove(1, (2,)),
]


def state(now: float = 100.0, idle: float = 60.0, rate: int = 200) -> ClientState:
    return ClientState(now, RateWindow(rate), idle)


def test_a_new_connection_is_anonymous_and_not_authenticated() -> None:
    s = state()
    assert s.phase is Phase.ANONYMOUS
    assert not s.authenticated and s.user_id is None


@pytest.mark.parametrize("command", ANONYMOUS_OK, ids=lambda c: type(c).__name__)
def test_anonymous_connection_may_ping_register_login_and_ready(command: f.Command) -> None:
    state().check(command)


@pytest.mark.parametrize("command", NEEDS_AUTH, ids=lambda c: type(c).__name__)
def test_anonymous_connection_gets_unauthorized_for_everything_else(command: f.Command) -> None:
    with pytest.raises(ClientError) as caught:
        state().check(command)
    assert caught.value.kind is ErrorKind.UNAUTHORIZED


@pytest.mark.parametrize("command", ANONYMOUS_OK + NEEDS_AUTH, ids=lambda c: type(c).__name__)
def test_ready_connection_may_send_every_command_but_ready(command: f.Command) -> None:
    s = state()
    s.transition("ready", 7)
    if isinstance(command, f.Ready):
        with pytest.raises(ClientError) as caught:
            s.check(command)
        assert caught.value.kind is ErrorKind.INVALID
    else:
        s.check(command)


@pytest.mark.parametrize("command", ANONYMOUS_OK + NEEDS_AUTH, ids=lambda c: type(c).__name__)
def test_handshake_authenticated_connection_may_send_everything_including_ready(command: f.Command) -> None:
    s = state()
    s.transition("handshake", 7)
    assert s.authenticated and s.user_id == 7
    s.check(command)


def test_ready_is_accepted_once() -> None:
    s = state()
    s.transition("handshake", 7)
    s.check(f.Ready(None, "web", None))
    s.transition("ready", 7)
    assert s.phase is Phase.READY
    with pytest.raises(ClientError) as caught:
        s.check(f.Ready(None, "web", None))
    assert caught.value.kind is ErrorKind.INVALID


@pytest.mark.parametrize(
    ("start", "event"),
    [(Phase.READY, "ready"), (Phase.READY, "handshake"), (Phase.AUTHENTICATED, "handshake"),
     (Phase.CLOSED, "ready"), (Phase.ANONYMOUS, "close")],
)
def test_transitions_not_in_the_table_are_refused(start: Phase, event: str) -> None:
    s = state()
    s.phase = start
    with pytest.raises(RuntimeError):
        s.transition(event, 7)
    assert s.phase is start


@pytest.mark.parametrize("command", ANONYMOUS_OK + NEEDS_AUTH, ids=lambda c: type(c).__name__)
def test_closed_connection_accepts_nothing(command: f.Command) -> None:
    s = state()
    s.transition("ready", 7)
    s.close()
    assert s.phase is Phase.CLOSED and not s.authenticated
    with pytest.raises(ClientError):
        s.check(command)


def test_anonymous_deadline_is_the_auth_deadline_when_idle_timeout_is_longer() -> None:
    s = state(now=100.0, idle=60.0)
    assert DEFAULTS.client_auth_timeout_s == 10.0
    assert s.deadline() == 110.0
    s.frame_received(105.0)
    assert s.deadline() == 110.0  # frames do not extend the auth deadline
    assert not s.auth_expired(109.999)
    assert s.auth_expired(110.0)


def test_anonymous_deadline_is_the_idle_timeout_when_shorter() -> None:
    s = state(now=100.0, idle=1.0)
    assert s.deadline() == 101.0
    s.frame_received(100.5)
    assert s.deadline() == 101.5
    assert not s.auth_expired(101.5)  # idle, not the auth deadline


def test_authenticated_deadline_is_last_frame_plus_idle_timeout_only() -> None:
    s = state(now=100.0, idle=60.0)
    s.transition("ready", 7)
    assert s.deadline() == 160.0
    s.frame_received(150.0)
    assert s.deadline() == 210.0
    assert not s.auth_expired(10_000.0)


def test_no_idle_deadline_while_the_offline_replay_runs_and_the_idle_timer_restarts_at_its_end() -> None:
    s = state(now=100.0, idle=60.0)
    s.transition("ready", 7)
    s.replaying = True
    assert s.deadline() == REPLAYING and REPLAYING != math.inf  # finite: the reader waits (Connection)
    s.frame_received(150.0)
    assert s.deadline() == REPLAYING
    s.replay_ended(500.0)
    assert s.deadline() == 560.0  # from the replay's end, not its last frame
    s.frame_received(530.0)
    assert s.deadline() == 590.0


def test_an_answer_waits_for_room_an_idle_timeout_from_now_and_an_anonymous_one_not_past_its_auth_deadline() -> None:
    s = state(now=100.0, idle=60.0)
    assert s.room_deadline(105.0) == 110.0  # anonymous: the auth deadline comes first
    assert state(now=100.0, idle=1.0).room_deadline(105.0) == 106.0
    s.transition("ready", 7)
    assert s.room_deadline(500.0) == 560.0  # from the wait's start, not the last frame's


def test_frames_beyond_the_rate_limit_in_one_second_are_refused() -> None:
    s = state(now=0.0, rate=5)
    admitted = [s.frame_received(10.0 + i * 0.01) for i in range(8)]
    assert admitted == [True] * 5 + [False] * 3
    assert s.frame_received(11.0)  # a new window
    assert s.last_frame_at == 11.0  # refused frames count as activity too


def test_rate_window_resets_after_one_second() -> None:
    window = RateWindow(2)
    assert [window.admit(t) for t in (0.0, 0.1, 0.2, 0.99)] == [True, True, False, False]
    assert [window.admit(t) for t in (1.0, 1.1, 1.2)] == [True, True, False]


def test_cost_budget_admits_while_left_then_refills_over_its_period() -> None:
    budget = CostBudget(10_000, period=60.0)
    for _ in range(2):
        assert budget.admit(0.0)
        budget.charge(5000, 0.0)
    assert not budget.admit(0.0)  # used up
    assert budget.admit(0.1)  # 16 units refilled
    budget.charge(25_000, 0.1)  # larger than the budget: answered, and in debt
    assert not budget.admit(60.0)  # 10,000 refilled of the 24,984 owed
    assert budget.admit(150.0)
    assert budget.admit(10_000.0) and budget._refilled(10_000.0) == 10_000  # never more than its size
