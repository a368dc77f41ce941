"""scripts/bench_mongo_layouts.py on the session's MongoDB-wire server: its arguments, that
each layout's commits store every message and leave no offline row once confirmed, the
commands they count, and the table."""

import os
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient

from vim_cluster import sysinfo

from ..servers import MongoDatabases
from ..support import script_module

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def layouts() -> Any:
    return script_module("bench_mongo_layouts.py")


@pytest.mark.parametrize("argv, message", [
    (["--batches", "4,a"], "comma-separated numbers"),
    (["--batches", "0"], "at least 1"),
    (["--repeat", "0"], "at least 1"),
    (["--ferretdb", "mysql"], "invalid choice"),
])
def test_bad_arguments_are_one_line_errors(layouts: Any, argv: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        layouts.parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.fixture
def databases(mongo_server: MongoDatabases) -> Iterator[dict[str, str]]:
    """Fresh databases by the names the script asks for, dropped afterwards."""
    made: dict[str, str] = {}
    yield made
    for url in made.values():
        mongo_server.drop(url)


def test_every_layout_stores_the_messages_and_empties_the_offline_sets(
        layouts: Any, mongo_server: MongoDatabases, databases: dict[str, str]) -> None:
    def url_of(name: str) -> str:
        return databases.setdefault(name, mongo_server.create())

    results = layouts.run(url_of, lambda: sysinfo.tree_cpu_seconds([os.getpid()]), [4, 8], messages=8, repeat=2)
    assert list(results) == [(layout, batch) for batch in (4, 8) for layout in layouts.LAYOUTS]
    assert all(len(rounds) == 2 for rounds in results.values())
    # A commit of 4 or 8 messages (to 4 recipients) sends at least its inserts and a confirm.
    assert all(sent >= 4 and wall > 0 for rounds in results.values() for _, wall, sent in rounds)
    # Per layout: 2 rounds x (batch 4: 1 untimed + 2 timed commits of 4; batch 8: 1 + 1 of 8).
    stored = 2 * (3 * 4 + 2 * 8)
    for name, url in databases.items():
        client: MongoClient[dict[str, Any]] = MongoClient(url)
        with client:
            db = client.get_default_database()
            shards = [c for c in db.list_collection_names() if c.startswith("chat_message_")]
            assert sum(db[c].count_documents({}) for c in shards) == stored, name
            if name == "layouts_today":
                assert db["pending_messages"].count_documents({}) == 0
                assert db["message_ids"].count_documents({}) == stored
            else:
                assert db["offline_sets"].count_documents({}) == 0, name
                assert db["offline_copies"].count_documents({}) == 0, name  # none left unreferenced
                claims = db["message_ids"].count_documents({})
                assert claims == (0 if name == "layouts_no_claims" else stored), name


def test_the_table_has_a_row_per_layout_and_batch(layouts: Any) -> None:
    text = layouts.table({("today", 40): [(650.0, 25.4, 7.0), (700.0, 26.0, 7.2), (600.0, 25.0, 7.0)],
                          ("no-claims", 40): [(321.4, 14.7, 15.3)]})
    lines = text.splitlines()
    assert lines[0].startswith("| layout | messages per commit | stores' CPU per message |")
    assert lines[2] == "| today | 40 | 650 µs | 25.4 | 7.0 |"  # medians
    assert lines[3] == "| no-claims | 40 | 321 µs | 14.7 | 15.3 |"
