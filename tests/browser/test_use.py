"""The web client as a person uses it (session 32's review): a refused `contacts` is asked
again with backoff (the list is not left empty), a message too large for one frame is said to
be too long instead of resetting the connection again and again, an unreachable server and a
refused sign-up are said in words, Enter sends and Shift+Enter starts a new line, scrolling to
the top brings the older messages, and a group shows its members and goes away for a member
removed from it."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from ..cluster.harness import Cluster
from ..support import free_port
from .conftest import (
    PASSWORD,
    TEST_TIMEOUT_S,
    answering_for_the_node,
    contact,
    create_group,
    from_another_device,
    message,
    open_chat,
    register,
    send_from_another_device,
    send_text,
    texts_in_log,
    tick,
    user_id,
)

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture says how to get it (or fails in CI)
    expect = None  # type: ignore[assignment]

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)


def test_a_refused_contacts_is_asked_again_with_backoff(cluster: Cluster, new_page: Any) -> None:
    """The node refuses `contacts` while the connection's contacts budget is used up
    (`error rate-limited`, docs/protocol.md §2.6). Here a WebSocket route in front of the real
    node refuses the first two: the page says the list may be out of date, asks again after
    about 1 s, then 2 s (±25 %), and shows the list; nobody sent too fast, so no banner says so."""
    asked: list[float] = []

    def refuse_twice(code: str, body: dict[str, Any]) -> dict[str, Any] | None:
        if code != "contacts":
            return None
        asked.append(time.monotonic())
        if len(asked) > 2:
            return None
        return {"error": "rate-limited", "detail": "contacts budget used up", "rid": body.get("rid")}

    sam = open_chat(new_page(), cluster.dept1)
    register(sam, "sam")
    ria = new_page()
    ria.route_web_socket(re.compile(r"^ws://"), answering_for_the_node(refuse_twice))
    open_chat(ria, cluster.dept2)
    register(ria, "ria")
    expect(ria.locator("#users .stale")).to_contain_text("may be out of date")
    expect(contact(ria, "sam")).to_be_visible()
    expect(ria.locator("#users .stale")).to_have_count(0)
    assert len(asked) >= 3, asked
    first, second = asked[1] - asked[0], asked[2] - asked[1]
    assert first >= 0.6 and second >= 1.3, asked  # 0.75-1.25 s, then 1.5-2.5 s
    expect(ria.locator("#banners .banner")).to_have_count(0)


def test_a_message_too_large_for_one_frame_fails_in_words_and_the_page_stays_connected(
        cluster: Cluster, new_page: Any) -> None:
    """A frame over the node's vim.websocket.max-frame (64 KiB) closes the connection (1009)
    before the node reads it: no `error too-large` names it. The page must not send it again on
    every reconnect (the connection would be reset forever): its bubble says "not sent: too
    long" and the next message goes out; a second such paste is refused by the page at once.
    One under max-frame but over max-content (16 KiB) is refused by the node, in the same words."""
    uma = open_chat(new_page(), cluster.master)
    register(uma, "uma")
    vin = open_chat(new_page(), cluster.dept1)
    register(vin, "vin")
    contact(uma, "vin").click()
    send_text(uma, "a long paste " + "x" * 70_000)
    expect(tick(uma, "a long paste")).to_have_text("not sent: too long")
    send_text(uma, "the short version")
    expect(uma.locator("#status")).to_contain_text("logged in as uma")
    expect(tick(uma, "the short version")).to_have_text(re.compile("sent|delivered"))
    send_text(uma, "another long paste " + "y" * 70_000)
    expect(tick(uma, "another long paste")).to_have_text("not sent: too long")
    expect(uma.locator("#banners .banner", has_text="That message is too long")).to_be_visible()
    expect(uma.locator("#status")).to_contain_text("logged in as uma")
    send_text(uma, "over max-content " + "z" * 20_000)
    expect(tick(uma, "over max-content")).to_have_text("not sent: too long")
    contact(vin, "uma").click()
    expect(message(vin, "the short version")).to_be_visible()
    expect(vin.locator("#log .msg")).to_have_count(1)


def test_an_unreachable_server_and_a_refused_sign_up_are_said_in_words(cluster: Cluster, new_page: Any) -> None:
    page = open_chat(new_page(), cluster.dept1)
    page.locator("#url").fill(f"ws://127.0.0.1:{free_port()}/")
    form = page.locator("#loginForm")
    form.locator("[name=username]").fill("nobody")
    form.locator("[name=password]").fill(PASSWORD)
    form.locator("button").click()
    expect(page.locator("#banners .banner")).to_contain_text("Cannot reach the server")
    expect(page.locator("#status")).to_have_text("disconnected")

    def too_many_accounts(code: str, body: dict[str, Any]) -> dict[str, Any] | None:
        return {"error": "rate-limited", "detail": "30 accounts", "rid": body.get("rid")} if code == "register" else None

    crowded = new_page()
    crowded.route_web_socket(re.compile(r"^ws://"), answering_for_the_node(too_many_accounts))
    open_chat(crowded, cluster.dept1)
    form = crowded.locator("#registerForm")
    form.locator("[name=username]").fill("one-too-many")
    form.locator("[name=password]").fill(PASSWORD)
    form.locator("button").click()
    expect(crowded.locator("#banners .banner")).to_contain_text("Too many accounts were made from this network")


def test_enter_sends_and_shift_enter_starts_a_new_line(cluster: Cluster, new_page: Any) -> None:
    wyn = open_chat(new_page(), cluster.dept1)
    register(wyn, "wyn")
    xia = open_chat(new_page(), cluster.dept2)
    register(xia, "xia")
    contact(wyn, "xia").click()
    box = wyn.locator("#text")
    box.press_sequentially("first line")
    box.press("Shift+Enter")
    box.press_sequentially("second line 你好 👋")
    box.press("Enter")
    expect(tick(wyn, "first line")).to_have_text(re.compile("sent|delivered"))
    assert box.input_value() == ""
    contact(xia, "wyn").click()
    expect(message(xia, "first line")).to_have_count(1)
    shown = message(xia, "first line").locator(".text").text_content()
    assert shown == "first line\nsecond line 你好 👋", shown


def test_scrolling_to_the_top_brings_the_older_messages(cluster: Cluster, new_page: Any) -> None:
    """35 messages while yan's page is open (counted unread as they come, in the tab's title too),
    then a reload (the unread count is the server's): the newest 30 show, and scrolling up to the
    top (no button to find) shows the other 5 above them, in order."""
    zed = open_chat(new_page(), cluster.master)
    register(zed, "zed")
    yan = open_chat(new_page(), cluster.dept2)
    register(yan, "yan", stay=True)
    burst = [f"line {i:02}" for i in range(35)]
    send_from_another_device(new_page(), cluster.master, "zed", user_id(zed, "yan"), burst)
    expect(contact(yan, "zed").locator(".badge")).to_have_text("35")
    expect(yan).to_have_title("(35) vim-cluster chat")
    contact(zed, "yan").click()
    expect(tick(zed, "line 34")).to_have_text("delivered ✓✓")  # yan's page confirmed them: no replay after the reload
    yan.reload()
    yan.locator("#main").wait_for(state="visible")
    expect(contact(yan, "zed").locator(".badge")).to_have_text("35")
    contact(yan, "zed").click()
    expect(yan.locator("#log .msg")).to_have_count(30)
    expect(contact(yan, "zed").locator(".badge")).to_have_count(0)
    expect(yan).to_have_title("vim-cluster chat")
    yan.locator("#log").evaluate("(log) => { log.scrollTop = 0; }")
    expect(yan.locator("#log .msg")).to_have_count(35)
    assert texts_in_log(yan) == burst


def test_a_group_shows_its_members_and_goes_away_for_one_removed(cluster: Cluster, new_page: Any) -> None:
    amy = open_chat(new_page(), cluster.dept1)
    register(amy, "amy")
    bob = open_chat(new_page(), cluster.dept2)
    register(bob, "bob")
    create_group(amy, "design", ["bob"])
    amy.locator("#groups .contact", has_text="design").click()
    expect(amy.locator("#convhead")).to_have_text("# design  (2 members)")
    expect(amy.locator("#members")).to_have_text(re.compile(r"^(you, bob|bob, you)$"))
    bob.locator("#groups .contact", has_text="design").click()
    expect(bob.locator("#members")).to_have_text(re.compile(r"^(you, amy|amy, you)$"))
    send_text(bob, "my last word in design")
    expect(message(amy, "my last word in design")).to_be_visible()
    group_id = str(amy.locator("#groups .contact", has_text="design").get_attribute("data-chat")).split(":")[1]
    removal = {"groupId": group_id, "members": [user_id(amy, "bob")]}
    from_another_device(new_page(), cluster.master, "amy", [("group-remove", removal, "group-ok")])
    expect(bob.locator("#groups .contact", has_text="design")).to_have_count(0)
    expect(bob.locator("#convhead")).to_contain_text("no longer a member")
    expect(bob.locator("#compose")).to_be_hidden()
    expect(message(bob, "my last word in design")).to_be_visible()  # what was said stays readable
    expect(amy.locator("#convhead")).to_have_text("# design  (1 member)")
    expect(amy.locator("#members")).to_have_text("you")
