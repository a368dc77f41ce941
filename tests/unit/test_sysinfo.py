"""sysinfo's CPU time of a process tree, on real processes."""

import subprocess
import sys

import pytest

from vim_cluster.sysinfo import cpu_seconds, tree_cpu_seconds

from ..support import BURN_CPU

pytestmark = pytest.mark.timeout(60)

# A wrapper whose child burns CPU, as setpriv runs PostgreSQL, whose backends are its children.
WRAPPER = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {BURN_CPU!r}])\n"


def test_a_tree_counts_the_cpu_of_its_live_descendants() -> None:
    with subprocess.Popen([sys.executable, "-c", WRAPPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as wrapper:
        try:
            assert wrapper.stdin is not None and wrapper.stdout is not None
            wrapper.stdin.write("go\n")  # to the grandchild, which shares the wrapper's stdin
            wrapper.stdin.flush()
            assert wrapper.stdout.readline().strip() == "burnt"
            own = cpu_seconds([wrapper.pid])
            tree = tree_cpu_seconds([wrapper.pid])
            assert own < 0.25  # the wrapper itself only waits
            assert tree >= own + 0.28  # the grandchild's 0.3 s (in clock ticks)
            assert tree_cpu_seconds([wrapper.pid, wrapper.pid]) == pytest.approx(tree, abs=0.05)  # counted once
        finally:
            subprocess.run(["pkill", "-KILL", "-P", str(wrapper.pid)], check=False)
            wrapper.kill()
    assert tree_cpu_seconds([wrapper.pid]) == 0.0  # reaped: nothing to count


def test_a_pid_that_does_not_run_counts_nothing() -> None:
    assert tree_cpu_seconds([2**22 + 12345]) == 0.0
