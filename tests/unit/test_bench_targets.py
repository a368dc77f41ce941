"""scripts/bench_targets.py without servers: its arguments and the target table it prints
from the runs' records (medians of interleaved rounds, reached / not reached)."""

import argparse
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..support import BURN_CPU, IDLE, script_module


@pytest.fixture(scope="module")
def targets() -> Any:
    return script_module("bench_targets.py")


def test_arguments_default_to_the_full_run_and_quick_shortens_it(targets: Any) -> None:
    full = targets.parse_args([])
    assert (full.repeat, full.duration, full.connections, full.members, full.cores_rate) == (3, 8.0, 10000, 500, 1000)
    assert "centrifugo" in full.systems and "postgresql" in full.systems
    quick = targets.parse_args(["--quick", "--repeat", "2"])
    assert quick.quick and quick.duration == 5.0 and quick.repeat == 2


@pytest.mark.parametrize("argv, message", [
    (["--systems", "vim-cluster,redis"], "unknown redis"),
    (["--repeat", "0"], "at least 1"),
    (["--against", "/tmp"], "goes with --quick"),
    (["--quick", "--against", "/nonexistent"], "no .venv/bin/vim-cluster"),
])
def test_bad_arguments_are_one_line_errors(targets: Any, argv: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        targets.parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def _record(system: str, kind: str, **figures: Any) -> dict[str, Any]:
    return {"system": system, "kind": kind, **figures}


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split("|")[1:-1]]


def test_target_table_takes_medians_and_judges_each_target(targets: Any) -> None:
    records = []
    for cpu, rate in ((300.0, 3000.0), (360.0, 3600.0), (1000.0, 2000.0)):  # medians: 360 µs, 3,000 msg/s
        records.append(_record("vim-cluster", "max", server_cpu_us_per_delivered=cpu, delivered_per_s=rate,
                               generator_cpu_us_per_delivered=190.0))
    for cpu in (280.0, 300.0, 320.0):
        records.append(_record("python-socketio", "max", server_cpu_us_per_delivered=cpu, delivered_per_s=4600.0))
    records.append(_record("centrifugo", "max", server_cpu_us_per_delivered=240.0, delivered_per_s=8000.0))
    records += [_record("vim-cluster", "fixed", p99_ms=p99, server_cores=1.0) for p99 in (8.0, 9.0, float("nan"))]
    records.append(_record("vim-cluster", "connections", rss_per_connection_kb=24.8, connections=10000))
    records.append(_record("trio-websocket", "floor", rss_per_connection_kb=19.5))
    records.append(_record("vim-cluster", "group", server_cpu_us_per_delivered=18.0, members=500,
                           delivered_per_s=20000.0))
    records.append(_record("mysql+mongo (FerretDB/PostgreSQL)", "max", delivered_per_s=1500.0,
                           stores_cpu_us_per_delivered=2450.0))
    records.append(_record("mysql+mongo (FerretDB/SQLite)", "max", delivered_per_s=300.0))
    records.append(_record("vim-cluster", "max", failed=1))  # a failed run counts in no median
    rows = {row[0]: row for row in targets.target_rows(records)}
    socketio = rows["server CPU per delivered message, cross-node, vs python-socketio"]
    assert socketio[1:] == ["≤ 0.5×", "1.2× (360 µs)", "python-socketio 300 µs", "not reached"]
    assert rows["server CPU per delivered message, cross-node, vs Centrifugo"][2:] == [
        "1.5× (360 µs)", "Centrifugo 240 µs", "reached"]
    assert rows["p99 latency at 1,000 msg/s, cross-node"][2::2] == ["8.5 ms", "reached"]  # NaN left out
    rss = rows["RSS per idle authenticated connection at 10,000 connections"]
    assert rss[2:] == ["24.8 KB", "bare trio-websocket server 19.5 KB", "not reached"]
    group = rows["group fan-out (500 members over 3 nodes): server CPU per delivered copy"]
    assert group[2] == "18.0 µs" and group[4] == "reached"
    stores = rows["MySQL + MongoDB profile cross-node msg/s, % of SQLite's (FerretDB on PostgreSQL)"]
    assert stores[2:] == ["50.0 % (1,500 vs 3,000 msg/s)", "FerretDB on SQLite: 10.0 % (300 msg/s)", "reached"]
    their_cpu = rows["MySQL + MongoDB profile: the stores' CPU per delivered message (MariaDB, FerretDB, PostgreSQL)"]
    assert their_cpu[2:4] == ["2,450 µs", "FerretDB on SQLite: - (MariaDB, FerretDB)"]


def test_the_cpu_ratios_show_each_round_and_how_many_rounds_meet_the_goal(targets: Any) -> None:
    """The verdict is the medians'; beside it, each round's ratio (that round's runs) and how
    many rounds meet the goal, so that a median that meets it by luck shows."""
    records = [_record("vim-cluster", "max", round=r, server_cpu_us_per_delivered=cpu)
               for r, cpu in enumerate((400.0, 343.0, 542.0))]
    records += [_record("python-socketio", "max", round=r, server_cpu_us_per_delivered=cpu)
                for r, cpu in enumerate((836.0, 766.0, 921.0))]
    records += [_record("centrifugo", "max", round=r, server_cpu_us_per_delivered=cpu)
                for r, cpu in enumerate((170.0, float("nan"), 174.0))]  # a round without a figure is left out
    rows = {row[0]: row for row in targets.target_rows(records)}
    socketio = rows["server CPU per delivered message, cross-node, vs python-socketio"]
    assert socketio[2:] == ["0.478× (400 µs; by round 0.48, 0.45, 0.59)", "python-socketio 836 µs",
                            "reached (2 of 3 rounds)"]
    centrifugo = rows["server CPU per delivered message, cross-node, vs Centrifugo"]
    assert centrifugo[2] == "2.3× (400 µs; by round 2.35, 3.11)" and centrifugo[4] == "not reached (0 of 2 rounds)"


def test_report_prints_the_table_and_every_run_and_quick_compares_trees(targets: Any) -> None:
    records = [_record("vim-cluster", "max", round=r, server_cpu_us_per_delivered=cpu, delivered_per_s=3000.0)
               for r, cpu in enumerate((400.0, 380.0, 390.0))]
    records += [_record("vim-cluster (/work/main)", "max", round=r, server_cpu_us_per_delivered=cpu,
                        delivered_per_s=2800.0) for r, cpu in enumerate((420.0, 430.0, 410.0))]
    args = argparse.Namespace(quick=True, repeat=3, duration=5.0, cores_rate=1000.0, systems=["vim-cluster"],
                              against="/nowhere/main")
    text = targets.report(records, args, ("1.00 1.00 1.00", "2.00 1.50 1.00"), 95.0)
    assert text.splitlines()[0].startswith("quick A/B: 3 interleaved round(s), 5 s per run, 1.6 min; load average")
    assert text.splitlines()[1] == f"interpreter (the nodes, the load generator): {targets.interpreter(targets.ROOT / '.venv')}"
    assert text.splitlines()[2] == "interpreter of /nowhere/main: unknown (no /nowhere/main/.venv/pyvenv.cfg)"
    quick = [cells(line) for line in text.split("\nevery run:")[0].splitlines() if line.startswith("| vim")]
    assert quick == [["vim-cluster", "390 µs", "400.0, 380.0, 390.0", "3,000", "-", "-", "-"],
                     ["vim-cluster (/work/main)", "420 µs", "420.0, 430.0, 410.0", "2,800", "-", "-", "0 of 3 / 0 of 0"]]
    assert len([line for line in text.split("\nevery run:")[1].splitlines() if line.startswith("| vim")]) == 6
    args.quick = False
    assert "| target | goal | vim-cluster | beside it | reached? |" in targets.report(records, args, ("", ""), 1.0)


def test_quick_compares_trees_by_server_cpu_and_by_server_over_generator_cpu(targets: Any) -> None:
    # The second tree spends more server CPU in every round, but on a slower host (its
    # generator too): over the generator it is lower in two rounds of three.
    runs = {"vim-cluster": [(400.0, 400.0), (380.0, 400.0), (390.0, 390.0)],
            "vim-cluster (/tmp/base)": [(420.0, 400.0), (400.0, 440.0), (410.0, 420.0)]}
    records = [_record(system, "max", round=r, server_cpu_us_per_delivered=cpu, generator_cpu_us_per_delivered=gen,
                       delivered_per_s=2000.0)
               for system, figures in runs.items() for r, (cpu, gen) in enumerate(figures)]
    first, second = targets.quick_rows(records)
    assert first[1:] == ["390 µs", "400.0, 380.0, 390.0", "2,000", "400 µs", "1.000", "-"]
    assert second[1:] == ["410 µs", "420.0, 400.0, 410.0", "2,000", "420 µs", "0.976", "0 of 3 / 2 of 3"]


def test_quick_with_systems_group_compares_the_group_fan_out(targets: Any) -> None:
    """`--quick --systems group`: the A/B is of the group fan-out's CPU per delivered copy;
    the cross-node runs of the same records are not its rows."""
    records = [_record(system, "group", round=r, server_cpu_us_per_delivered=cpu, delivered_per_s=9000.0)
               for system, figures in {"vim-cluster": (25.0, 26.0, 27.0),
                                       "vim-cluster (/tmp/base)": (28.0, 25.5, 29.0)}.items()
               for r, cpu in enumerate(figures)]
    records.append(_record("vim-cluster", "max", round=0, server_cpu_us_per_delivered=400.0))
    args = argparse.Namespace(quick=True, repeat=3, duration=6.0, cores_rate=1000.0, systems=["group"], against=None)
    assert targets.quick_kind(args) == targets.GROUP
    text = targets.report(records, args, ("1.00 1.00 1.00", "1.00 1.00 1.00"), 60.0)
    quick = [cells(line) for line in text.split("\nevery run:")[0].splitlines() if line.startswith("| vim")]
    assert [row[:3] + row[-1:] for row in quick] == [["vim-cluster", "26.0 µs", "25.0, 26.0, 27.0", "-"],
                                                     ["vim-cluster (/tmp/base)", "28.0 µs", "28.0, 25.5, 29.0",
                                                      "1 of 3 / 0 of 0"]]
    assert targets.quick_kind(argparse.Namespace(systems=["vim-cluster"])) == targets.MAX


def test_a_run_waits_for_a_quiet_machine(targets: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The previous run's leftovers (a store server still busy) are not measured as the next
    system's: settle() samples until the machine is under SETTLE_BUSY, and says so."""
    samples = iter([(0.9, 0.0), (0.6, 0.3), (0.1, 0.05)])
    taken: list[float] = []

    def sample(window_s: float) -> tuple[float, float]:
        taken.append(window_s)
        return next(samples)

    monkeypatch.setattr(targets, "cpu_sample", sample)
    quiet = targets.settle()
    assert len(taken) == 3 and (quiet["busy_before"], quiet["steal_before"]) == (10, 5)


def test_once_the_cpu_is_quiet_the_disk_is_synced_and_the_record_says_how_dirty_it_was(
        targets: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A previous system's writes still in the page cache are written back before the run,
    not during it (where a commit's fdatasync would wait behind them)."""
    events: list[str] = []
    samples = iter([(0.9, 0.0), (0.1, 0.0)])

    def sample(window_s: float) -> tuple[float, float]:
        events.append("cpu")
        return next(samples)

    monkeypatch.setattr(targets, "cpu_sample", sample)

    def dirty_kb() -> int:
        events.append("dirty")
        return 24_772

    monkeypatch.setattr(targets, "dirty_kb", dirty_kb)
    monkeypatch.setattr(targets.os, "sync", lambda: events.append("sync"))
    quiet = targets.settle()
    assert events == ["cpu", "cpu", "dirty", "sync"]
    assert quiet["dirty_kb_before"] == 24_772 and quiet["sync_s"] >= 0


def test_dirty_kb_reads_dirty_and_writeback_from_meminfo(targets: Any, tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24576000 kB\nDirty:              1234 kB\nWriteback:           66 kB\n")
    assert targets.dirty_kb(str(meminfo)) == 1300
    assert targets.dirty_kb(str(tmp_path / "none")) is None
    meminfo.write_text("MemTotal:       24576000 kB\n")  # no Dirty line
    assert targets.dirty_kb(str(meminfo)) is None


def test_a_machine_that_stays_busy_delays_a_run_at_most_settle_max(targets: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(targets, "cpu_sample", lambda window_s: (1.0, 0.8))
    monkeypatch.setattr(targets, "SETTLE_MAX_S", 0.0)
    assert targets.settle()["busy_before"] == 100


def test_the_cpu_sample_is_a_share_of_all_cores(targets: Any) -> None:
    busy, steal = targets.cpu_sample(0.05)
    assert 0.0 <= steal <= busy <= 1.0


def test_a_profiles_record_gains_the_stores_cpu_per_delivered_message(targets: Any,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    settled: list[bool] = []
    monkeypatch.setattr(targets, "settle", lambda: settled.append(True))  # the machine is quiet
    with subprocess.Popen([sys.executable, "-c", IDLE], stdin=subprocess.PIPE) as idle, \
         subprocess.Popen([sys.executable, "-c", BURN_CPU], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as store:
        try:
            def run(kind: str) -> dict[str, Any]:  # the store works while the run lasts
                assert store.stdin is not None and store.stdout is not None
                store.stdin.write("go\n")
                store.stdin.flush()
                assert store.stdout.readline().strip() == "burnt"
                return {"delivered": 1000, "kind": kind}

            record = targets.with_stores_cpu(run, [store.pid, idle.pid])("max")
            assert settled == [True] and record["kind"] == "max"
            assert 280 <= record["stores_cpu_us_per_delivered"] <= 400  # 0.3 s over 1,000 messages
            failed = targets.with_stores_cpu(lambda kind: {"failed": 1}, [store.pid])("max")
            assert "stores_cpu_us_per_delivered" not in failed  # nothing delivered: no figure
        finally:
            store.kill()
            idle.kill()


def test_the_disk_probe_times_real_syncs_and_leaves_no_file(targets: Any, tmp_path: Any) -> None:
    with targets.disk_probe(tmp_path, every_s=0.001) as times:
        for _ in range(20_000):  # until it has synced 3 times (a sync takes a few ms at most)
            if len(times) >= 3:
                break
            time.sleep(0.001)
        assert (tmp_path / "disk-probe.bin").stat().st_size == 4096
    assert len(times) >= 3 and all(t > 0 for t in times)
    assert list(tmp_path.iterdir()) == []


def test_the_fixed_rate_runs_record_the_disks_syncs_beside_them(targets: Any, tmp_path: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A group commit's ack waits for an fdatasync; a probe beside the cluster's runs at the
    fixed rate times the same syncs on the same disk (session 21: the host held some up to
    150 ms, and those set the p99)."""
    probed: list[Any] = []

    @contextlib.contextmanager
    def probe(folder: Any) -> Iterator[list[float]]:
        probed.append(folder)
        yield [0.002, 0.004, 0.030]

    monkeypatch.setattr(targets, "disk_probe", probe)
    run = targets.with_disk_probe(lambda kind: {"kind": kind, "delivered": 10}, tmp_path)
    assert run("fixed") == {"kind": "fixed", "delivered": 10, "disk_sync_p99_ms": 30.0, "disk_sync_max_ms": 30.0,
                            "disk_syncs_over_10ms": 1}
    assert run("max") == {"kind": "max", "delivered": 10} and probed == [tmp_path]  # beside the fixed rate only
    assert targets.disk_figures([]) == {}


def test_the_p99_shows_each_round_beside_the_disks_slowest_syncs(targets: Any) -> None:
    records = [_record("vim-cluster", "fixed", round=r, p99_ms=p99, disk_sync_p99_ms=3.0, disk_sync_max_ms=slow)
               for r, (p99, slow) in enumerate(((82.9, 149.3), (9.7, 8.1), (25.9, 34.0)))]
    rows = {row[0][:14]: row for row in targets.target_rows(records)}
    assert rows["p99 latency at"][2:] == ["25.9 ms (by round 82.9, 9.7, 25.9)", "python-socketio -, centrifugo -",
                                          "not reached (1 of 3 rounds)"]
    assert rows["the disk durin"][2] == "p99 3.0 ms, max 34.0 ms (max by round 149, 8.1, 34.0)"


def test_interpreter_names_the_python_a_venv_was_made_from(targets: Any, tmp_path: Path) -> None:
    """The table says which Python ran it: the build moves every Python system's CPU."""
    (tmp_path / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = false\n"
                                         "version = 3.11.2\nexecutable = /usr/bin/python3.11\n")
    assert targets.interpreter(tmp_path) == "Python 3.11.2, /usr/bin/python3.11"
    (tmp_path / "pyvenv.cfg").write_text("home = /opt/python/bin\nversion = 3.13.0\n")  # older venvs: no executable
    assert targets.interpreter(tmp_path) == "Python 3.13.0, /opt/python/bin"
    assert targets.interpreter(tmp_path / "gone") == f"unknown (no {tmp_path / 'gone' / 'pyvenv.cfg'})"
