"""register, login (with lockout) and ready over real sockets (PROTOCOL.md §2.1)."""

from __future__ import annotations

import time

import pytest
import trio

from vim_cluster.core.lockout import registrations_counted
from vim_cluster.errors import ClientError, ErrorKind
from vim_cluster.node.app import RunningNode
from vim_cluster.node.handlers.account import register
from vim_cluster.protocol import frames as f

from ..support import PASSWORD, connect


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_register_returns_a_decimal_user_id_and_echoes_rid(url: str) -> None:
    with trio.fail_after(10):
        async with connect(url) as client:
            await client.send("register", username="alice", password=PASSWORD, name="Alice A.", rid="reg-1")
            reply = await client.expect("register-ok")
            assert reply["rid"] == "reg-1"
            assert isinstance(reply["userId"], str) and reply["userId"].isdigit() and int(reply["userId"]) > 0
            await client.send("register", username="bob", password=PASSWORD)
            other = await client.expect("register-ok")
            assert int(other["userId"]) > int(reply["userId"])  # time-ordered ids


async def test_register_with_a_taken_username_is_conflict(url: str) -> None:
    with trio.fail_after(10):
        async with connect(url) as client:
            await client.send("register", username="alice", password=PASSWORD)
            await client.expect("register-ok")
            await client.send("register", username="alice", password="another password", rid="again")
            error = await client.expect_error("conflict")
            assert error["rid"] == "again"


@pytest.mark.parametrize(
    ("username", "password"),
    [("ab", PASSWORD), ("a" * 33, PASSWORD), ("has space", PASSWORD), ("ünï", PASSWORD),
     ("semi;colon", PASSWORD), ("alice", "short"), ("alice", "1234567"), ("alice", "")],
)
async def test_register_with_a_bad_username_or_short_password_is_invalid(url: str, username: str, password: str) -> None:
    with trio.fail_after(10):
        async with connect(url) as client:
            await client.send("register", username=username, password=password, rid="bad")
            error = await client.expect_error("invalid")
            assert error["rid"] == "bad"
            await client.send("login", username="alice", password=PASSWORD)  # nothing was created
            await client.expect_error("unauthorized")


async def test_a_display_or_group_name_that_could_impersonate_is_invalid_and_a_good_one_is_stored_nfc(
        url: str) -> None:
    """Attack: mallory registers as "admin\u202egnp.exe" (a right-to-left override: others
    read "adminexe.png") and names a group with a bidi isolate: `error invalid`, nothing made.
    A name that passes is stored in NFC without surrounding spaces, as everyone's contacts show."""
    with trio.fail_after(10):
        async with connect(url) as client:
            await client.send("register", username="mallory", password=PASSWORD, name="admin\u202egnp.exe", rid="r")
            error = await client.expect_error("invalid")
            assert error["rid"] == "r" and error["detail"].startswith("register.name: must be 1 to 64 characters")
            await client.send("register", username="mallory", password=PASSWORD, name=" Ame\u0301lie ")
            await client.expect("register-ok")  # the first one made nothing: the username is free
            await client.ready(await client.login("mallory"))
            await client.send("group-create", name="team\u2067", members=[], rid="g")
            assert (await client.expect_error("invalid"))["detail"].startswith("group-create.name: ")
        async with connect(url) as other:
            await other.ready(await other.register_login("olga"))
            await other.send("contacts")
            users = {u["name"] for u in (await other.expect("contacts"))["users"]}
            assert users == {"Amélie"}


async def test_login_returns_user_id_token_and_expiry(url: str) -> None:
    with trio.fail_after(10):
        async with connect(url) as client:
            await client.send("register", username="alice", password=PASSWORD)
            registered = await client.expect("register-ok")
            before = now_ms()
            await client.send("login", username="alice", password=PASSWORD, rid="in")
            login = await client.expect("login-ok")
            assert login["userId"] == registered["userId"]
            assert login["rid"] == "in"
            assert isinstance(login["token"], str) and login["token"]
            assert login["expiresAt"] > before + 3600_000  # valid for longer than an hour


async def test_login_with_wrong_password_or_unknown_user_is_unauthorized(url: str) -> None:
    with trio.fail_after(10):
        async with connect(url) as client:
            await client.register_login("alice")
            await client.send("login", username="alice", password="wrong password", rid="w")
            assert (await client.expect_error("unauthorized"))["rid"] == "w"
            await client.send("login", username="nobody", password=PASSWORD, rid="n")
            assert (await client.expect_error("unauthorized"))["rid"] == "n"


async def test_five_failed_logins_lock_the_username_even_for_the_right_password(url: str) -> None:
    with trio.fail_after(15):
        async with connect(url) as client:
            await client.send("register", username="alice", password=PASSWORD)
            await client.expect("register-ok")
            for i in range(5):
                await client.send("login", username="alice", password=f"wrong-{i}-password")
                await client.expect_error("unauthorized")
            await client.send("login", username="alice", password=PASSWORD, rid="right")
            error = await client.expect_error("locked")
            assert error["rid"] == "right"
            await client.send("login", username="ALICE", password=PASSWORD)  # same username
            await client.expect_error("locked")
        async with connect(url) as other:  # the lock is the username's, not the connection's
            await other.send("login", username="alice", password=PASSWORD)
            await other.expect_error("locked")


async def test_failures_below_the_limit_are_forgotten_after_a_successful_login(url: str) -> None:
    with trio.fail_after(15):
        async with connect(url) as client:
            await client.send("register", username="alice", password=PASSWORD)
            await client.expect("register-ok")
            for _ in range(4):
                await client.send("login", username="alice", password="wrong password")
                await client.expect_error("unauthorized")
            await client.login("alice")
            for _ in range(4):
                await client.send("login", username="alice", password="wrong password")
                await client.expect_error("unauthorized")
            await client.login("alice")


async def test_lockout_of_one_username_leaves_others_alone(url: str) -> None:
    with trio.fail_after(15):
        async with connect(url) as client:
            await client.register_login("bob")
            await client.send("register", username="alice", password=PASSWORD)
            await client.expect("register-ok")
            for _ in range(5):
                await client.send("login", username="alice", password="wrong password")
                await client.expect_error("unauthorized")
            await client.login("bob")


async def test_ready_answers_ready_ok_then_sync_done_zero(node: RunningNode, url: str) -> None:
    with trio.fail_after(10):
        async with connect(url) as client:
            await client.register_login("alice")
            before = now_ms()
            await client.send("ready", token=client.token, client="pc", uuid="dev-1", rid="go")
            ready = await client.expect("ready-ok")
            assert ready["userId"] == client.user_id
            assert ready["nodeId"] == node.ctx.node_id
            assert before - 1000 <= ready["serverTime"] <= now_ms() + 1000
            assert ready["recallWindowMs"] == round(node.ctx.config.message.recall_window * 1000)
            assert ready["rid"] == "go"
            first = await client.next_frame()
            assert first["code"] == "sync-done" and first["message"]["count"] == 0


async def test_ready_with_a_bad_token_is_unauthorized_and_the_connection_stays_anonymous(url: str) -> None:
    with trio.fail_after(10):
        async with connect(url) as client:
            await client.register_login("alice")
            for token in ("garbage", client.token[:-3] + "abc" if client.token else "x"):
                await client.send("ready", token=token, rid="bad")
                assert (await client.expect_error("unauthorized"))["rid"] == "bad"
            await client.send("ready", rid="none")  # no token, no handshake
            assert (await client.expect_error("unauthorized"))["rid"] == "none"
            await client.send("contacts")
            await client.expect_error("unauthorized")
            assert await client.ready() == []  # the right token still works


async def test_a_second_ready_on_one_connection_is_invalid(url: str) -> None:
    with trio.fail_after(10):
        async with connect(url) as client:
            await client.register_login("alice")
            await client.ready()
            await client.send("ready", token=client.token, rid="twice")
            assert (await client.expect_error("invalid"))["rid"] == "twice"
            await client.send("contacts", rid="still-ready")
            assert (await client.expect("contacts"))["rid"] == "still-ready"


async def test_a_token_from_one_connection_readies_another(url: str) -> None:
    with trio.fail_after(10):
        async with connect(url) as first:
            token = await first.register_login("alice")
        async with connect(url) as second:
            await second.send("ready", token=token)
            assert (await second.expect("ready-ok"))["userId"] == first.user_id


async def test_a_secret_file_readable_by_others_is_warned_about_at_start(start_node, node_folder) -> None:
    from structlog.testing import capture_logs

    node_folder.mkdir(parents=True, exist_ok=True)
    secret = node_folder / "secret.key"
    secret.write_text("a-secret-of-more-than-32-bytes-for-this-test")
    secret.chmod(0o644)
    with capture_logs() as logs:
        node = await start_node()
    node.stop()
    warnings = [e for e in logs if e["event"] == "secret_file_too_open"]
    assert warnings and warnings[0]["mode"] == "0o644", logs
    secret.chmod(0o600)
    with capture_logs() as logs:
        node = await start_node()
    node.stop()
    assert not [e for e in logs if e["event"] == "secret_file_too_open"]


class FromAddress:
    """A connection as `register` sees it, from a given source address (a real node behind it)."""

    def __init__(self, node: RunningNode, address: str) -> None:
        self.ctx, self.address = node.ctx, address
        self.replies: list[object] = []

    async def reply(self, frame: object) -> None:
        self.replies.append(frame)


async def test_registrations_are_counted_per_address_before_the_password_is_hashed(node: RunningNode) -> None:
    """A flood of `register`s from one address filled the node's two hashing threads, which
    every login waits for: 30 per 15 minutes per address; loopback (tools, tests) is not counted."""
    limit = node.ctx.config.lockout.registrations_per_address
    with trio.fail_after(60):
        outside = FromAddress(node, "10.0.0.9")
        for n in range(limit):
            await register(outside, f.Register(f"new-{n}", PASSWORD, None))  # type: ignore[arg-type]
        with pytest.raises(ClientError) as refused:
            await register(outside, f.Register("one-more", PASSWORD, None))  # type: ignore[arg-type]
        assert refused.value.kind is ErrorKind.RATE_LIMITED and "too many new accounts" in refused.value.detail
        assert len(outside.replies) == limit and await node.ctx.db(node.ctx.directory.user_by_username, "one-more") is None
        await register(FromAddress(node, "10.0.0.10"), f.Register("elsewhere", PASSWORD, None))  # type: ignore[arg-type]
        local = FromAddress(node, "127.0.0.1")
        for n in range(limit + 1):
            await register(local, f.Register(f"local-{n}", PASSWORD, None))  # type: ignore[arg-type]
    assert not registrations_counted("127.0.0.1") and not registrations_counted("::/64")
    assert registrations_counted("10.0.0.9") and registrations_counted("2001:db8::/64")
