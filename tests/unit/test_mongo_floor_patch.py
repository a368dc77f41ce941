"""scripts/mongo_floor.patch (the MySQL + MongoDB profile's floor, docs/performance.md session
32) still applies to the MongoDB store, and what it makes still compiles: a change to the store
that breaks it fails here, not in the next session's experiment."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STORE = Path("vim_cluster/adapters/mongo_messages.py")

pytestmark = pytest.mark.timeout(60)


def test_the_floor_patch_applies_to_the_store(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed (apt-get install git)")
    (tmp_path / STORE).parent.mkdir(parents=True)
    shutil.copy(ROOT / STORE, tmp_path / STORE)
    applied = subprocess.run(["git", "apply", str(ROOT / "scripts" / "mongo_floor.patch")],
                             cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert applied.returncode == 0, applied.stderr
    floor = (tmp_path / STORE).read_text()
    assert floor != (ROOT / STORE).read_text()
    assert floor.count("scripts/mongo_floor.patch") == 3  # saves, confirms, frame log
    compile(floor, str(STORE), "exec")
