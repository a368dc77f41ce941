"""The operators' dashboard in a real browser (issue 13): three nodes with their numbers,
actions only after the operator login (a kick shows a human message in the kicked person's
page), a drain that moves people to another node, and a failed node in red. Draining
dept-1 and killing dept-2 are the module's last tests."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from ..cluster.harness import Cluster
from .conftest import TEST_TIMEOUT_S, open_chat, register

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture says how to get it (or fails in CI)
    expect = None  # type: ignore[assignment]

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)


def open_dashboard(page: Any, cluster: Cluster) -> Any:
    page.goto(f"http://127.0.0.1:{cluster.master.http_port}/dashboard")
    return page


def row(page: Any, node: str) -> Any:
    return page.locator(f'#nodes tr[data-node="{node}"]')


def test_dashboard_shows_three_nodes_with_their_numbers(cluster: Cluster, new_page: Any) -> None:
    page = open_dashboard(new_page(), cluster)
    for node in ("master", "dept-1", "dept-2"):
        expect(row(page, node).locator(".pill").last).to_have_text("alive")
        expect(row(page, node).locator(".checks .pill")).not_to_have_count(0)
    expect(row(page, "master").locator(".checks")).to_contain_text("redis")
    expect(row(page, "dept-1").locator(".checks")).to_contain_text("master_link")
    expect(row(page, "dept-1").locator("svg.spark polyline")).to_have_count(2)
    expect(page.locator("#totAlive")).to_have_text("3 / 3 serving")


# Where each visible header cell of the node table is, and whether it can be seen: the page
# never scrolls sideways; a cell beyond the table's box is reachable by scrolling that box.
COLUMNS = """() => {
  const table = document.getElementById("nodes").closest("table");
  let box = table.parentElement;  // the table's scroll container
  while (box !== document.body && !["auto", "scroll"].includes(getComputedStyle(box).overflowX)) box = box.parentElement;
  const seen = box.getBoundingClientRect();
  const cells = [...table.querySelectorAll("thead th")].filter((th) => !th.hidden);
  const out = {page: document.documentElement.scrollWidth - innerWidth, box: [seen.left, seen.right, innerWidth],
               scrolls: box.scrollWidth - box.clientWidth, hidden: []};
  for (const th of cells) {
    th.scrollIntoView({block: "nearest", inline: "nearest"});
    const r = th.getBoundingClientRect(), now = box.getBoundingClientRect();
    if (r.left < now.left - 1 || r.right > now.right + 1 || r.right > innerWidth + 1) out.hidden.push(th.textContent || "(drain)");
  }
  box.scrollLeft = 0;
  return out;
}"""


@pytest.mark.parametrize("width", [1300, 1024, 390])
def test_every_column_of_the_node_table_can_be_seen(cluster: Cluster, new_page: Any, width: int) -> None:
    """At 1300 px (the operator walkthrough: State was cut off) and at 1024 px the whole table
    fits, the operator's drain column included; at a phone's width it scrolls sideways in its
    own box (the page does not), and scrolling that box shows every column."""
    page = open_dashboard(new_page(), cluster)
    page.set_viewport_size({"width": width, "height": 800})
    page.locator("#login [name=name]").fill("ops-ida")
    page.locator("#login [name=secret]").fill((cluster.folder / "secret.key").read_text())
    page.locator("#login button").click()
    expect(page.locator("#nodes button", has_text="drain")).to_have_count(3)
    expect(row(page, "dept-1").locator(".checks .pill")).to_have_count(4)
    columns = page.evaluate(COLUMNS)
    assert columns["page"] <= 0 and columns["hidden"] == [], columns
    assert 0 <= columns["box"][0] and columns["box"][1] <= columns["box"][2], columns  # its scrollbar is in view
    if width >= 1024:
        assert columns["scrolls"] <= 0, columns  # nothing to scroll: every column in view at once
    else:
        assert columns["scrolls"] > 0, columns


def test_admin_actions_work_only_after_the_operator_login(cluster: Cluster, new_page: Any) -> None:
    hal = open_chat(new_page(), cluster.dept1)
    register(hal, "hal")
    page = open_dashboard(new_page(), cluster)
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#nodes button", has_text="drain")).to_have_count(0)
    refused = page.request.post(f"http://127.0.0.1:{cluster.master.http_port}/admin/kick",
                                data=json.dumps({"user": "hal"}), headers={"content-type": "application/json"})
    assert refused.status == 401
    page.locator("#login [name=name]").fill("ops-ida")
    page.locator("#login [name=secret]").fill("not the secret")
    page.locator("#login button").click()
    expect(page.locator("#opmsg")).to_have_text("Wrong cluster secret.")
    page.locator("#login [name=secret]").fill((cluster.folder / "secret.key").read_text())
    page.locator("#login button").click()
    expect(page.locator("#who")).to_have_text("ops-ida")
    expect(page.locator("#nodes button", has_text="drain")).to_have_count(3)
    page.locator("#kick [name=user]").fill("hal")
    page.locator("#kick button", has_text="Kick user").click()
    expect(page.locator("#opmsg")).to_have_text("1 session(s) closed")
    expect(hal.locator("#banners .banner")).to_contain_text("An administrator signed you out.")
    expect(hal.locator("#banners .banner")).not_to_contain_text("4002")
    expect(page.locator("#trail tr").first).to_contain_text(re.compile(r"ops-ida.*kick.*hal"))
    page.locator("#logout").click()
    expect(page.locator("#login")).to_be_visible()


def test_drain_moves_the_node_s_people_to_another_node(cluster: Cluster, new_page: Any) -> None:
    joy = open_chat(new_page(), cluster.dept1)
    register(joy, "joy")
    expect(joy.locator("#status")).to_contain_text("logged in as joy on dept-1")
    page = open_dashboard(new_page(), cluster)
    page.locator("#login [name=name]").fill("ops-ida")
    page.locator("#login [name=secret]").fill((cluster.folder / "secret.key").read_text())
    page.locator("#login button").click()
    row(page, "dept-1").locator("button", has_text="drain").click()  # the confirm() is accepted
    expect(page.locator("#opmsg")).to_have_text("1 session(s) closed on dept-1")
    expect(row(page, "dept-1").locator(".pill").last).to_have_text("draining")
    expect(joy.locator("#status")).to_contain_text(re.compile(r"logged in as joy on (master|dept-2)"))
    expect(page.locator("#trail tr").first).to_contain_text(re.compile(r"ops-ida.*drain.*dept-1"))


def test_a_failed_node_turns_red(cluster: Cluster, new_page: Any) -> None:
    page = open_dashboard(new_page(), cluster)
    expect(row(page, "dept-2").locator(".pill").last).to_have_text("alive")
    cluster.dept2.kill()
    expect(row(page, "dept-2")).to_have_class("dead")
    expect(row(page, "dept-2").locator(".pill.bad").last).to_have_text(re.compile("unreachable|DEAD"))
    expect(row(page, "master").locator(".pill").last).to_have_text("alive")
    expect(page.locator("#totAlive")).to_have_text("2 / 3 serving")  # master and the drained dept-1
