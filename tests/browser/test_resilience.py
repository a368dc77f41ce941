"""The web client when things go wrong (a node frozen, killed or restarted, a store error
answering `ready`, a message refused, a second person in the same tab, a phone): nothing sent
is lost, nothing is shown twice, no conversation keeps a gap, nothing of one person stays for
the next, and the page finds a dead connection and another node by itself.

Each test that freezes or kills a node brings it back (healthy) before it ends."""

from __future__ import annotations

import contextlib
import datetime
import re
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from ..cluster.harness import Cluster, ClusterNode
from .conftest import (
    TEST_TIMEOUT_S,
    answering_for_the_node,
    contact,
    log_in,
    message,
    open_chat,
    register,
    send_from_another_device,
    send_text,
    texts_in_log,
    tick,
    user_id,
    wait_for_url_port,
)

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture says how to get it (or fails in CI)
    expect = None  # type: ignore[assignment]

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)

RECONNECT_MS = 40_000  # a node restart plus the client's backoff


@contextlib.contextmanager
def brought_back(node: ClusterNode) -> Iterator[ClusterNode]:
    """The test may freeze (SIGSTOP) or kill the node; afterwards it runs again, healthy."""
    try:
        yield node
    finally:
        if node.running():
            node.signal(signal.SIGCONT)
        else:
            node.start()
        node.wait_health(200)


def restart_killed(node: ClusterNode) -> None:
    """SIGKILL (a frozen node too), then start it again on the same ports."""
    node.kill()
    node.start()


def test_a_message_sent_into_a_frozen_node_is_resent_with_its_cid_after_the_reconnect(
        cluster: Cluster, new_page: Any) -> None:
    ada = open_chat(new_page(), cluster.dept1)
    register(ada, "ada")
    bea = open_chat(new_page(), cluster.dept2)
    register(bea, "bea")
    contact(bea, "ada").click()
    contact(ada, "bea").click()
    with brought_back(cluster.dept2):
        cluster.dept2.signal(signal.SIGSTOP)  # bea's node: the frame goes out, nothing answers
        send_text(bea, "sent into a frozen node")
        expect(tick(bea, "sent into a frozen node")).to_have_text("sending …")
        restart_killed(cluster.dept2)  # the node died before it read the frame: it was never stored
        expect(bea.locator("#status")).to_contain_text("logged in as bea", timeout=RECONNECT_MS)
        expect(tick(bea, "sent into a frozen node")).to_have_text(re.compile("sent|delivered|read"))
        expect(message(bea, "sent into a frozen node")).to_have_count(1)  # one bubble: the pending one became the acked one
        expect(message(ada, "sent into a frozen node")).to_have_count(1)
    ada.reload()  # stored once on the server
    ada.locator("#main").wait_for(state="visible")
    contact(ada, "bea").click()
    expect(message(ada, "sent into a frozen node")).to_have_count(1)
    expect(ada.locator("#log .msg")).to_have_count(1)


def test_a_refused_message_gets_retry_and_a_rate_limited_one_is_resent(cluster: Cluster, new_page: Any) -> None:
    """`unavailable` names the message's cid: its bubble says "not sent" with Retry, which resends
    it with the same cid. `rate-limited` (naming the cid, as a node does, or none, as older nodes
    did) is not shown as "not sent": the page resends what is waiting by itself.
    The node's answers are played by a WebSocket route in front of the real node."""
    refused: set[str] = set()

    def refuse(code: str, body: dict[str, Any]) -> dict[str, Any] | None:
        content = body.get("content", "")
        if code != "message" or not content.startswith("refuse ") or content in refused:
            return None
        refused.add(content)
        if content == "refuse unavailable":
            return {"error": "unavailable", "detail": "store down", "cid": body["cid"]}
        if content == "refuse rate-limited":
            return {"error": "rate-limited", "detail": "too fast", "cid": body["cid"]}
        return {"error": "rate-limited", "detail": "too fast"}

    cal = new_page()
    cal.route_web_socket(re.compile(r"^ws://"), answering_for_the_node(refuse))
    open_chat(cal, cluster.master)
    register(cal, "cal")
    dee = open_chat(new_page(), cluster.dept1)
    register(dee, "dee")
    contact(cal, "dee").click()
    send_text(cal, "refuse unavailable")
    expect(tick(cal, "refuse unavailable")).to_have_text("not sent")
    expect(cal.locator("#banners .banner")).to_contain_text("The service is having trouble")
    message(cal, "refuse unavailable").locator("button.retry").click()
    expect(tick(cal, "refuse unavailable")).to_have_text(re.compile("sent ✓|delivered"))
    expect(message(cal, "refuse unavailable").locator("button.retry")).to_have_count(0)
    send_text(cal, "refuse rate-limited")
    expect(tick(cal, "refuse rate-limited")).to_have_text(re.compile("sent ✓|delivered"))
    send_text(cal, "refuse too fast, no cid")
    expect(tick(cal, "refuse too fast, no cid")).to_have_text(re.compile("sent ✓|delivered"))
    contact(dee, "cal").click()
    expect(message(dee, "refuse unavailable")).to_have_count(1)
    expect(message(dee, "refuse rate-limited")).to_have_count(1)
    expect(message(dee, "refuse too fast, no cid")).to_have_count(1)
    expect(message(cal, "refuse")).to_have_count(3)


def test_after_a_reconnect_the_open_conversation_has_no_gap(cluster: Cluster, new_page: Any) -> None:
    """While gus's page is cut off, his other device sends 35 messages: none is replayed to the
    page (they are his own), so only history shows them; the newest page (30) and "older
    messages" together must show every one, in order."""
    fay = open_chat(new_page(), cluster.dept1)
    register(fay, "fay2")
    gus = open_chat(new_page(), cluster.dept2)
    register(gus, "gus2")
    contact(gus, "fay2").click()
    send_text(gus, "before the outage")
    expect(tick(gus, "before the outage")).to_have_text(re.compile("sent|delivered"))
    burst = [f"burst {i:02}" for i in range(35)]
    with brought_back(cluster.dept2):
        cluster.dept2.kill()
        expect(gus.locator("#status")).to_have_text(re.compile("reconnecting…"))
        send_from_another_device(new_page(), cluster.master, "gus2", user_id(gus, "fay2"), burst)
        cluster.dept2.start()
        expect(gus.locator("#status")).to_contain_text("logged in as gus2", timeout=RECONNECT_MS)
        expect(message(gus, "burst 34")).to_be_visible()
        gus.locator("#older").click()  # as a person would: scroll up, "older messages"
        expect(message(gus, "burst 00")).to_be_visible()
        expect(message(gus, "before the outage")).to_be_visible()
    shown = texts_in_log(gus)
    assert shown == ["before the outage", *burst], shown


def test_logout_then_another_person_in_the_same_tab_starts_clean(cluster: Cluster, new_page: Any) -> None:
    """kim, then lou, in one tab. lou must not see kim's read ticks (max read kim's messages,
    not lou's), and lou reading max's message must reach max although kim had read a newer one."""
    max_ = open_chat(new_page(), cluster.dept1)
    register(max_, "max")
    lou_first = open_chat(new_page(), cluster.dept2)
    register(lou_first, "lou")
    lou_first.context.close()
    tab = open_chat(new_page(), cluster.master)
    register(tab, "kim")
    contact(max_, "lou").click()
    send_text(max_, "max to lou")
    expect(tick(max_, "max to lou")).to_have_text("sent ✓")
    contact(max_, "kim").click()
    send_text(max_, "max to kim")
    send_from_another_device(new_page(), cluster.dept2, "lou", user_id(tab, "max"), ["lou to max"])
    expect(contact(max_, "lou").locator(".badge")).to_have_text("1")  # max has not read it
    contact(tab, "max").click()
    expect(message(tab, "max to kim")).to_be_visible()  # kim reads max's newest message
    send_text(tab, "kim to max")
    expect(tick(tab, "kim to max")).to_have_text("read ✓✓")  # max has kim's chat open

    tab.locator("#logout").click()
    expect(tab.locator("#auth")).to_be_visible()
    log_in(tab, "lou")
    expect(tab.locator("#convhead")).to_have_text("Pick a contact")  # nothing of kim's
    expect(tab.locator("#log .msg")).to_have_count(0)
    expect(tab.locator("#compose")).to_be_hidden()
    expect(contact(tab, "kim")).to_be_visible()  # lou's contacts: kim is one, and lou is not listed
    expect(contact(tab, "lou")).to_have_count(0)
    contact(tab, "max").click()
    expect(message(tab, "max to lou")).to_be_visible()
    expect(tick(tab, "lou to max")).to_have_text("delivered ✓✓")  # not kim's "read"
    contact(max_, "lou").click()
    expect(tick(max_, "max to lou")).to_have_text("read ✓✓")  # lou's read reached the server


def test_a_tab_brought_back_to_the_front_reconnects_at_once(cluster: Cluster, new_page: Any) -> None:
    """A background tab's timers are throttled (Chromium: once a minute after 5 minutes), so the
    reconnect waiting for its backoff may come long after the person looks at the tab again.
    Here the page's clock is paused (no timer fires at all) while its node is killed and started
    again: the tab coming to the front (visibilitychange) reconnects at once."""
    page = new_page()
    page.clock.install()
    open_chat(page, cluster.dept1)
    register(page, "tia")
    with brought_back(cluster.dept1):
        page.clock.pause_at(datetime.datetime.now() + datetime.timedelta(seconds=1))
        cluster.dept1.kill()
        expect(page.locator("#status")).to_have_text(re.compile("reconnecting…"))
        cluster.dept1.start()
        cluster.dept1.wait_health(200)
        page.evaluate("() => document.dispatchEvent(new Event('visibilitychange'))")
        expect(page.locator("#status")).to_contain_text("logged in as tia on dept-1")
    page.clock.resume()


def test_a_frozen_node_is_noticed_by_the_ping_deadline(cluster: Cluster, new_page: Any) -> None:
    """`?ping=2`: a ping every 2 s, 2 s to answer (the default is 25 s and 10 s). A frozen node
    (SIGSTOP: the TCP connection stays open, nothing answers) shows as reconnecting."""
    page = new_page()
    page.goto(f"http://127.0.0.1:{cluster.dept1.http_port}/?ping=2")
    wait_for_url_port(page, cluster.dept1.port)
    register(page, "ned")
    expect(page.locator("#status")).to_contain_text("logged in as ned on dept-1")
    with brought_back(cluster.dept1):
        cluster.dept1.signal(signal.SIGSTOP)
        expect(page.locator("#status")).to_have_text(re.compile("reconnecting…"), timeout=10_000)
        expect(page.locator("#banners .banner")).to_contain_text("The connection to the server was lost")
    expect(page.locator("#status")).to_contain_text("logged in as ned", timeout=RECONNECT_MS)


def test_the_page_moves_to_another_node_when_its_own_stays_down(cluster: Cluster, new_page: Any) -> None:
    """The page's node (its web origin too) is killed and stays down: after a few failed tries
    the page connects to another node from the last /dashboard.json it read."""
    oli = open_chat(new_page(), cluster.dept1)
    register(oli, "oli")
    pam = open_chat(new_page(), cluster.master)
    register(pam, "pam")
    expect(contact(oli, "pam").locator(".dot")).to_have_class(re.compile(r"\bon\b"))
    contact(oli, "pam").click()
    with brought_back(cluster.dept1):
        cluster.dept1.kill()
        expect(oli.locator("#status")).to_have_text(re.compile("reconnecting…"))
        expect(oli.locator("#status")).to_have_text(re.compile(r"logged in as oli on (master|dept-2)"),
                                                    timeout=RECONNECT_MS)
        send_text(oli, "from another node")
        expect(tick(oli, "from another node")).to_have_text(re.compile("sent|delivered"))
        contact(pam, "oli").click()
        expect(message(pam, "from another node")).to_be_visible()


def test_the_page_moves_to_a_node_on_another_host_by_the_name_it_advertises(cluster: Cluster, new_page: Any) -> None:
    """Nodes on hosts of their own (here dept-1b listens on 127.0.0.2 only): the page, served by
    dept-1 under the name dept-1 advertises, moves to dept-1b's own address, not to its own host
    name at dept-1b's port (right only behind one published host, as with compose)."""
    other_host = cluster._start_node(
        lambda: cluster.write_node("dept-1b", "slave", cluster.slave_master_url("dept-1b"), host="127.0.0.2"))
    try:
        other_host.wait_health(200)
        ida = open_chat(new_page(), cluster.dept1)
        register(ida, "ida")
        ida.wait_for_function("() => knownNodes.some((n) => n.node === 'dept-1b' && n.url.includes('127.0.0.2'))")
        with brought_back(cluster.dept1):
            cluster.dept1.kill()  # dept-1b comes next in the page's list (nodes sorted by id)
            expect(ida.locator("#status")).to_have_text(re.compile("logged in as ida on dept-1b"), timeout=RECONNECT_MS)
    finally:
        other_host.stop()
        cluster.nodes.pop("dept-1b")


def test_an_unavailable_store_answering_ready_keeps_the_token(cluster: Cluster, new_page: Any) -> None:
    """Only an authentication error (unauthorized, invalid) answering `ready` signs the person
    out. Here the first `ready` after a reload is answered `unavailable` (a WebSocket route in
    front of the real node plays the store error): the page says so, tries again, and the
    stayed-signed-in token is kept."""
    fail_next_ready = [False]

    def fail_ready(code: str, body: dict[str, Any]) -> dict[str, Any] | None:
        if code != "ready" or not fail_next_ready[0]:
            return None
        fail_next_ready[0] = False
        return {"error": "unavailable", "detail": "redis down", "rid": body.get("rid")}

    page = new_page()
    page.route_web_socket(re.compile(r"^ws://"), answering_for_the_node(fail_ready))
    open_chat(page, cluster.dept2)
    register(page, "una", stay=True)
    fail_next_ready[0] = True
    page.reload()
    expect(page.locator("#banners .banner")).to_contain_text("The service is having trouble")
    expect(page.locator("#status")).to_contain_text("logged in as una on dept-2")
    assert not fail_next_ready[0]  # the error was answered
    expect(page.locator("#auth")).to_be_hidden()
    assert page.evaluate("localStorage.getItem('token')")


def test_a_phone_sized_screen_fits_without_scrolling_sideways(cluster: Cluster, new_page: Any) -> None:
    vic = open_chat(new_page(), cluster.master)
    register(vic, "vic")
    page = new_page()
    page.set_viewport_size({"width": 390, "height": 844})
    open_chat(page, cluster.dept1)

    def fits() -> None:
        width = page.evaluate("window.innerWidth")
        assert page.evaluate("document.documentElement.scrollWidth") <= width

    fits()  # the sign-in forms
    register(page, "wes")
    contact(page, "vic").click()
    send_text(page, "hello from a phone, a message long enough to wrap on a narrow screen")
    expect(tick(page, "hello from a phone")).to_have_text(re.compile("sent|delivered"))
    fits()
    for button in (page.locator("#compose button"), page.locator("#logout")):
        box = button.bounding_box()
        assert box is not None
        assert 0 <= box["x"] and box["x"] + box["width"] <= 390, box
        assert 0 <= box["y"] and box["y"] + box["height"] <= 844, box
