"""The HTTP port's Content-Security-Policy in a real browser: the chat and the dashboard work
with their scripts from files only, text that looks like HTML (a display name, a message)
shows as text, and a script that does reach a page as HTML (an inline <script>, an onerror
handler) is refused, not run (docs/security.md, "The HTTP port's pages")."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from ..cluster.harness import Cluster
from .conftest import PASSWORD, TEST_TIMEOUT_S, contact, message, open_chat, register, send_text

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture says how to get it (or fails in CI)
    expect = None  # type: ignore[assignment]

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)

HOSTILE_NAME = '<img src=x onerror="window.pwned=1">'
HOSTILE_TEXT = '<script>window.pwned=2</script><img src=y onerror="window.pwned=3">'
# What an injection would do if the page ever rendered text as HTML: an inline script and an
# inline event handler, each setting window.pwned; resolves with the CSP's reports of them
# (what came within 5 s: none without a CSP).
INJECT = """() => new Promise((resolve) => {
  const seen = [];
  setTimeout(() => resolve(seen.sort()), 5000);
  document.addEventListener("securitypolicyviolation", (e) => {
    seen.push(e.effectiveDirective);
    if (seen.length === 2) resolve(seen.sort());
  });
  const s = document.createElement("script"); s.textContent = "window.pwned = 4"; document.body.append(s);
  document.getElementById("log").insertAdjacentHTML("beforeend", '<img src="/nothing" onerror="window.pwned = 5">');
})"""


def violations(page: Any) -> list[str]:
    """The CSP refusals Chromium reports on `page`'s console, from now on."""
    seen: list[str] = []
    page.on("console", lambda m: seen.append(m.text) if "Content Security Policy" in m.text else None)
    return seen


def test_the_pages_work_under_the_csp_and_injected_script_does_not_run(cluster: Cluster, new_page: Any) -> None:
    eve = new_page()
    eve_refusals = violations(eve)
    open_chat(eve, cluster.dept1)
    form = eve.locator("#registerForm")
    form.locator("[name=username]").fill("eve")
    form.locator("[name=name]").fill(HOSTILE_NAME)
    form.locator("[name=password]").fill(PASSWORD)
    form.locator("button").click()
    eve.locator("#main").wait_for(state="visible")
    joe = new_page()
    joe_refusals = violations(joe)
    open_chat(joe, cluster.dept2)
    register(joe, "joe")
    contact(joe, HOSTILE_NAME).click()  # the display name is text: the markup, not an image
    expect(joe.locator("#convhead")).to_have_text(HOSTILE_NAME)
    contact(eve, "joe").click()
    send_text(eve, HOSTILE_TEXT)
    expect(message(joe, HOSTILE_TEXT)).to_be_visible()
    expect(joe.locator("#log img")).to_have_count(0)
    assert joe.evaluate("window.pwned") is None and eve.evaluate("window.pwned") is None
    assert eve_refusals == [] and joe_refusals == []  # all the chat needs is allowed

    # Had the page rendered it as HTML, the browser would still refuse to run it.
    assert joe.evaluate(INJECT) == ["script-src-attr", "script-src-elem"]
    assert joe.evaluate("window.pwned") is None
    assert joe_refusals  # and says so on the console

    dashboard = new_page()
    dashboard_refusals = violations(dashboard)
    dashboard.goto(f"http://127.0.0.1:{cluster.master.http_port}/dashboard")
    expect(dashboard.locator("#totAlive")).to_have_text("3 / 3 serving")
    assert dashboard.evaluate(INJECT.replace('"log"', '"nodes"')) == ["script-src-attr", "script-src-elem"]
    assert dashboard.evaluate("window.pwned") is None
    assert dashboard_refusals and all("script-src" in text for text in dashboard_refusals)


def test_a_name_stored_before_the_name_rule_shows_without_its_bidi_and_control_characters(
        cluster: Cluster, new_page: Any) -> None:
    """A display name from before the node refused them (an older release's row) holding a
    right-to-left override (U+202E: "Rex gnp.exe" would read "Rex exe.png", and so would the
    text after it in the same line) and a line break: the page shows it without them."""
    rex = open_chat(new_page(), cluster.dept1)
    register(rex, "rex")
    database = sqlite3.connect(cluster.folder / "data" / "directory.db", timeout=10)
    try:
        with database:
            database.execute("UPDATE users SET name = ? WHERE username = 'rex'", ("Rex \u202egnp.exe\n\u2067",))
    finally:
        database.close()
    viv = open_chat(new_page(), cluster.dept2)
    register(viv, "viv")
    contact(viv, "Rex gnp.exe").click()
    assert viv.locator("#convhead").text_content() == "Rex gnp.exe"
    assert viv.locator("#users .contact", has_text="Rex").first.text_content().startswith("Rex gnp.exe")


SCOT = "Ewan \U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"  # the Scottish flag: tags
TANA = "\u1832\u1820\u1828\u180e\u1820"  # Tana in Mongolian script: a vowel separator (Cf)


def test_names_whose_spelling_needs_format_characters_register_and_show_whole(cluster: Cluster,
                                                                             new_page: Any) -> None:
    """A flag made of tag characters and a Mongolian name with its vowel separator: both are
    format characters (Cf) that the name rule and the page keep, unlike a bidi override."""
    for username, name in (("ewan", SCOT), ("tana", TANA)):
        page = open_chat(new_page(), cluster.dept1)
        form = page.locator("#registerForm")
        form.locator("[name=username]").fill(username)
        form.locator("[name=name]").fill(name)
        form.locator("[name=password]").fill(PASSWORD)
        form.locator("button").click()
        page.locator("#main").wait_for(state="visible")
    una = open_chat(new_page(), cluster.dept2)
    register(una, "una")
    for name in (SCOT, TANA):
        contact(una, name).click()
        expect(una.locator("#convhead")).to_have_text(name)
