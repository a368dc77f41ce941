"""Every adapter of a port behind one fixture, so one suite checks them all against real servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from vim_cluster.adapters.mongo_messages import MongoMessages
from vim_cluster.adapters.mysql_directory import MysqlDirectory
from vim_cluster.adapters.sqlite_directory import SqliteDirectory
from vim_cluster.adapters.sqlite_messages import SqliteMessages
from vim_cluster.ports import Directory, MessageStore

from ..servers import (  # noqa: F401 - fixtures for this folder's tests
    START_TIMES,
    ferretdb_on_postgresql,
    mongo_server,
    mongo_url,
    mysql_server,
    mysql_url,
    private_ferretdb,
    private_mariadb,
)

T = TypeVar("T", Directory, MessageStore)
DirectoryOpener = Callable[[], Directory]
MessagesOpener = Callable[[], MessageStore]


def _openers(make: Callable[[], T]) -> Iterator[Callable[[], T]]:
    """Yields `open_one`: each call opens another adapter; all are closed after the test."""
    opened: list[T] = []

    def open_one() -> T:
        adapter = make()
        opened.append(adapter)
        return adapter

    yield open_one
    for adapter in opened:
        adapter.close()


@pytest.fixture(params=["sqlite", "mysql"])
def open_directory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DirectoryOpener]:
    """Opens another adapter on this test's directory store (each is closed after the test)."""
    url = request.getfixturevalue("mysql_url") if request.param == "mysql" else None

    def make() -> Directory:
        return SqliteDirectory(str(tmp_path / "directory.db")) if url is None else MysqlDirectory(url)

    yield from _openers(make)


@pytest.fixture
def directory(open_directory: DirectoryOpener) -> Directory:
    return open_directory()


@pytest.fixture(params=["sqlite", "mongo"])
def open_messages(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MessagesOpener]:
    """Opens another adapter on this test's message store (each is closed after the test)."""
    url = request.getfixturevalue("mongo_url") if request.param == "mongo" else None

    def make() -> MessageStore:
        return SqliteMessages(str(tmp_path / "messages.db")) if url is None else MongoMessages(url)

    yield from _openers(make)


@pytest.fixture
def messages(open_messages: MessagesOpener) -> MessageStore:
    return open_messages()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How long each private test server took to start (the numbers go in release notes)."""
    if not START_TIMES:
        return
    terminalreporter.section("test servers")
    by_label: dict[str, list[float]] = {}
    for label, seconds in START_TIMES:
        by_label.setdefault(label, []).append(seconds)
    for label, times in by_label.items():
        terminalreporter.write_line(
            f"{label}: first {times[0]:.2f} s; {len(times)} in all, {min(times):.2f}-{max(times):.2f} s"
        )
