"""scripts/bench_backlog.py on a real SQLite store: its arguments, what it writes and confirms,
and the table it prints."""

from pathlib import Path
from typing import Any

import pytest

from vim_cluster.adapters.sqlite_messages import SqliteMessages
from vim_cluster.model import MessageId, UserId

from ..support import script_module

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def backlog() -> Any:
    return script_module("bench_backlog.py")


@pytest.mark.parametrize("argv, message", [
    ([], "one of the arguments --messages --ferretdb is required"),
    (["--messages", "sqlite:x", "--backlogs", "10,a"], "comma-separated numbers"),
    (["--messages", "sqlite:x", "--backlogs", "100,10"], "ascending"),
    (["--messages", "sqlite:x", "--rounds", "0"], "at least 1"),
])
def test_bad_arguments_are_one_line_errors(backlog: Any, argv: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        backlog.parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_an_unknown_store_url_is_refused(backlog: Any) -> None:
    with pytest.raises(SystemExit, match="sqlite:PATH or mongodb"):
        backlog.open_store("mysql://db/vim")


def test_it_leaves_the_backlog_offline_and_confirms_the_live_traffic(backlog: Any, tmp_path: Path) -> None:
    store = SqliteMessages(str(tmp_path / "messages.db"))
    try:
        results = backlog.measure(store, [0, 30], rounds=3, batch=8)
        assert [b for b, _ in results] == [0, 30] and all(s > 0 for _, s in results)
        offline = [m for u in range(backlog.OFFLINE_USERS)
                   for m in store.pending(UserId(backlog.BIG + 1_500 + u), MessageId(0), 100)]
        assert len(offline) == 30  # never confirmed
        live = [m for u in range(4) for m in store.pending(UserId(backlog.BIG + 14 + u), MessageId(0), 100)]
        assert len(live) == 8 and all(m.id > backlog.BIG for m in live)  # only the last commit's wait
    finally:
        store.close()


def test_main_prints_a_row_per_backlog(backlog: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    backlog.main(["--messages", f"sqlite:{tmp_path / 'm.db'}", "--backlogs", "0,20", "--rounds", "2", "--batch", "5"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| other users' offline rows | ms per commit (5 saves + 5 confirms) | messages/s |"
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["0", "20"]
