"""sysinfo's CPU time of a process tree, on real processes."""

import subprocess
import sys

import pytest

from vim_cluster.sysinfo import cpu_seconds, tree_cpu_seconds

pytestmark = pytest.mark.timeout(60)

# A wrapper whose child burns CPU until it has used 0.3 s, then waits (alive) to be killed:
# as setpriv runs PostgreSQL, whose backends are its children.
GRANDCHILD = (
    "import time\n"
    "while time.process_time() < 0.3:\n"
    "    pass\n"
    "print('burnt', flush=True)\n"
    "time.sleep(60)\n"
)
WRAPPER = (
    "import subprocess, sys\n"
    f"child = subprocess.Popen([sys.executable, '-c', {GRANDCHILD!r}])\n"
    "child.wait()\n"
)


def test_a_tree_counts_the_cpu_of_its_live_descendants() -> None:
    with subprocess.Popen([sys.executable, "-c", WRAPPER], stdout=subprocess.PIPE, text=True) as wrapper:
        try:
            assert wrapper.stdout is not None and wrapper.stdout.readline().strip() == "burnt"
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
