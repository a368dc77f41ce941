"""The FerretDB the tests and benchmarks start: Go's collector set as docs/operations.md
advises."""

import os
from pathlib import Path

import pytest

from ..servers import FERRETDB_GOGC, FerretDB

pytestmark = pytest.mark.timeout(60)


def _environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)


def test_ferretdb_runs_with_the_relaxed_collector(private_ferretdb: FerretDB) -> None:
    assert private_ferretdb.process is not None
    expected = os.environ.get("GOGC", FERRETDB_GOGC)  # a GOGC of ours wins (an A/B)
    assert _environ(private_ferretdb.process.pid)["GOGC"] == expected


def test_a_gogc_of_ours_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOGC", "150")
    assert FerretDB(tmp_path / "f").environment()["GOGC"] == "150"
    monkeypatch.delenv("GOGC")
    assert FerretDB(tmp_path / "g").environment()["GOGC"] == FERRETDB_GOGC == "400"
