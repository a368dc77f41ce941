"""Real-browser tests: Playwright (from PyPI) driving Debian's Chromium against a real
3-node cluster (`vim-cluster run` subprocesses, see tests/cluster/harness.py).

- The browser is /usr/bin/chromium (`apt-get install chromium`; scripts/install-test-servers.sh
  installs it). `playwright install` is never used. A missing Chromium or Playwright skips
  these tests with the reason, or fails them in CI (VIM_REQUIRE_TEST_SERVERS=1).
- Each test gets fresh browser contexts (two people = two contexts: separate storage).
- A failing test leaves a screenshot of every page it opened in
  test-artifacts/browser/<test name>/ (gitignored).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..cluster.conftest import cluster, cluster_redis_url, module_cluster  # noqa: F401 - fixtures
from ..cluster.harness import ClusterNode
from ..servers import unavailable

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
PASSWORD = "correct horse battery"
TIMEOUT_MS = 15_000

TEST_TIMEOUT_S = 120  # per browser test (each module sets it)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keeps each phase's report on the item, so fixtures can tell a failed test at teardown."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        unavailable(f"{CHROMIUM} is missing: apt-get install chromium (scripts/install-test-servers.sh does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is missing: pip install -e '.[test]' (scripts/test.sh does)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def new_page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Callable[[], Any]]:
    """`new_page()`: a page in a fresh browser context (its own storage: another person).
    On failure every page opened is saved as a screenshot under test-artifacts/browser/."""
    contexts: list[Any] = []
    pages: list[Any] = []

    def make() -> Any:
        context = browser.new_context(viewport={"width": 1280, "height": 760})
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.on("dialog", lambda dialog: dialog.accept())
        pages.append(page)
        return page

    yield make
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        folder = ARTIFACTS / re.sub(r"[^\w.-]", "_", request.node.name)
        folder.mkdir(parents=True, exist_ok=True)
        for n, page in enumerate(pages, start=1):
            if not page.is_closed():
                page.screenshot(path=str(folder / f"page-{n}.png"), full_page=True)
    for context in contexts:
        context.close()


def open_chat(page: Any, node: ClusterNode) -> Any:
    """The node's web client, its server URL prefilled from /healthz."""
    page.goto(f"http://127.0.0.1:{node.http_port}/")
    wait_for_url_port(page, node.port)
    return page


def wait_for_url_port(page: Any, port: int) -> None:
    """Until the page's server URL names `port`. (wait_for_function takes functions only in
    these tests: an expression is run with eval, which the HTTP port's CSP refuses.)"""
    page.wait_for_function("(port) => document.getElementById('url').value.includes(':' + port + '/')", arg=port)


def register(page: Any, username: str, stay: bool = False) -> None:
    _sign_in(page, "#registerForm", username, stay)


def log_in(page: Any, username: str, stay: bool = False) -> None:
    _sign_in(page, "#loginForm", username, stay)


def _sign_in(page: Any, form_id: str, username: str, stay: bool) -> None:
    """Fills in one of the two sign-in forms and waits for the chat to show."""
    form = page.locator(form_id)
    form.locator("[name=username]").fill(username)
    form.locator("[name=password]").fill(PASSWORD)
    if stay:
        form.locator("[name=stay]").check()
    form.locator("button").click()
    page.locator("#main").wait_for(state="visible")


def contact(page: Any, name: str) -> Any:
    return page.locator("#users .contact", has_text=name)


def send_text(page: Any, text: str) -> None:
    page.locator("#text").fill(text)
    page.locator("#compose button").click()


def create_group(page: Any, name: str, members: list[str]) -> None:
    """With the page's "+ new" form: a group of the people named (as the picker shows them)."""
    page.locator("#toggleGroup").click()
    page.locator("#newgroup [name=name]").fill(name)
    for member in members:
        page.locator("#pick label", has_text=member).locator("input").check()
    page.locator("#newgroup button").click()


def message(page: Any, text: str) -> Any:
    return page.locator("#log .msg", has_text=text)


def answering_for_the_node(error_for: Callable[[str, dict[str, Any]], dict[str, Any] | None]) -> Callable[[Any], None]:
    """A Playwright WebSocket route in front of the real node: a frame from the page for which
    `error_for(code, message)` gives an error body is answered with that `error` frame (the node
    never sees it); every other frame goes on to the node."""
    def route(ws: Any) -> None:
        server = ws.connect_to_server()

        def from_page(data: str | bytes) -> None:
            frame = json.loads(data) if isinstance(data, str) else {}
            error = error_for(frame.get("code", ""), frame.get("message") or {})
            if error is None:
                server.send(data)
            else:
                ws.send(json.dumps({"code": "error", "message": error}))

        ws.on_message(from_page)

    return route


def tick(page: Any, text: str) -> Any:
    return message(page, text).locator(".state")


# A second device of a user: a raw protocol session (client "pc") opened from a page of the node,
# which logs in and sends requests one by one ([code, message, the code of the answer] each),
# each waiting for its answer. It sends no `read` and no `received`.
RAW_SESSION_JS = """async ([url, username, password, requests]) => {
  const ws = new WebSocket(url), inbox = [];
  let wake = () => {};
  ws.onmessage = (e) => { inbox.push(JSON.parse(e.data)); wake(); };
  await new Promise((ok, ko) => { ws.onopen = ok; ws.onerror = () => ko(new Error("cannot connect to " + url)); });
  const next = async (code) => {
    for (;;) {
      const i = inbox.findIndex((f) => f.code === code || f.code === "error");
      if (i >= 0) { const f = inbox.splice(i, 1)[0]; if (f.code === "error") throw new Error(JSON.stringify(f)); return f.message; }
      await new Promise((r) => { wake = r; });
    }
  };
  const send = (code, message) => ws.send(JSON.stringify({code, message}));
  send("login", {username, password});
  const {token} = await next("login-ok");
  send("ready", {token, client: "pc", uuid: "raw-" + username});
  await next("ready-ok");
  for (const [code, message, answer] of requests) {
    send(code, message);
    await next(answer);
  }
  ws.close();
}"""


def from_another_device(page: Any, node: ClusterNode, username: str, requests: list[tuple[str, dict[str, Any], str]]) -> None:
    page.goto(f"http://127.0.0.1:{node.http_port}/healthz")  # a local page (about:blank may not reach 127.0.0.1)
    page.evaluate(RAW_SESSION_JS, [node.url, username, PASSWORD, requests])


def send_from_another_device(page: Any, node: ClusterNode, username: str, chat_id: str, texts: list[str]) -> None:
    """Friend messages to `chat_id`, one by one, each waiting for its ack."""
    from_another_device(page, node, username, [
        ("message", {"cid": f"raw-{i}-{content}", "chatId": chat_id, "type": "friend", "messageType": "text",
                     "content": content}, "ack")
        for i, content in enumerate(texts)])


def user_id(page: Any, name: str) -> str:
    found = contact(page, name).get_attribute("data-user-id")
    assert found, name
    return str(found)


def texts_in_log(page: Any) -> list[str]:
    return [str(t) for t in page.locator("#log .msg .text").all_text_contents()]
