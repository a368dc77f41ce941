"""`vim.store.sync` (docs/operations.md "Durability"): `full` by default, `normal` on request,
and what each setting opens: SQLite's synchronous pragma, MongoDB's write concern."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vim_cluster import wiring
from vim_cluster.adapters.mongo_base import open_client
from vim_cluster.config import StoreSync, load_config

from .test_config import config, config_error, write

SYNCHRONOUS = {1: "NORMAL", 2: "FULL"}


def _synchronous(store: Any) -> str:
    with store._db.reading() as conn:
        return SYNCHRONOUS[conn.execute("PRAGMA synchronous").fetchone()[0]]


@pytest.mark.parametrize(("given", "pragma", "autocheckpoint"),
                         [(None, "FULL", 1_000), ("full", "FULL", 1_000), ("normal", "NORMAL", 4_000)])
def test_the_sqlite_message_store_syncs_as_configured(tmp_path: Path, given: str | None, pragma: str,
                                                      autocheckpoint: int) -> None:
    # And checkpoints: with `normal` the node's store writer copies the WAL in a thread, and a
    # commit only at the backstop (adapters/sqlite_base.py).
    store_keys = {"messages": "sqlite:data/messages.db"} | ({"sync": given} if given else {})
    loaded = load_config(write(tmp_path, config(store=store_keys)))
    assert loaded.store.sync is StoreSync(given or "full")
    store = wiring.open_messages(loaded)
    try:
        assert _synchronous(store) == pragma
        assert store.checkpoints is (pragma == "NORMAL")
        with store._db.reading() as conn:  # type: ignore[attr-defined]
            assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == autocheckpoint
    finally:
        store.close()


@pytest.mark.parametrize("value", ["off", "FULL", 1, True])
def test_a_bad_sync_value_names_the_key(tmp_path: Path, value: Any) -> None:
    error = config_error(write(tmp_path, config(store={"sync": value})))
    assert error.key == "vim.store.sync"
    assert "\n" not in str(error) and repr(value) in error.problem


def test_normal_drops_the_journal_from_mongodbs_write_concern_unless_the_url_sets_it() -> None:
    url = "mongodb://127.0.0.1:1/vim"  # no server needed: the client connects lazily
    with open_client(url, journaled=False) as client:
        assert client.write_concern.document == {"w": 1}
    with open_client(url) as client:
        assert client.write_concern.document == {"w": 1, "j": True}
    with open_client(f"{url}?journal=true", journaled=False) as client:
        assert client.write_concern.document == {"j": True}
