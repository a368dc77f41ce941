"""Linux network namespaces as test "hosts", joined by a bridge in a namespace of their own.

- `Network(prefix, hosts)`: one namespace `PREFIX-HOST` per host, each with one veth (`eth0`)
  whose peer (`v-HOST`) sits on a bridge in the switch namespace `PREFIX-sw`. Nothing is added
  to the root namespace, so concurrent runs (other prefixes) cannot collide; every address is
  inside the run's own namespaces (SUBNET).
- Names resolve through per-namespace hosts files, `/etc/netns/PREFIX-HOST/hosts`, which
  `ip netns exec` bind-mounts over /etc/hosts.
- `cut(host)` / `restore(host)`: the switch side of the host's veth down / up (a pulled cable:
  the host keeps its address, its packets go nowhere).
- `destroy()` kills every process left in the namespaces, deletes them (which deletes their
  veths and the bridge) and their /etc/netns folders. `remove_stale()` does the same for
  earlier runs whose process is gone: the prefix is `vmh` + the owning process id in hex.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from vim_cluster.sysinfo import pid_alive

BASE = "vmh"
SUBNET = "10.213.7"  # /24, inside the run's namespaces only
NETNS_ETC = Path("/etc/netns")
_PREFIX_RE = re.compile(rf"^({BASE}([0-9a-f]+))-")


def run_prefix() -> str:
    """This process's namespace prefix (unique among live runs)."""
    return f"{BASE}{os.getpid():x}"


def missing_requirement() -> str | None:
    """Why this machine cannot make namespaces (None when it can)."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (run the tests as root, e.g. in CI)"
    if shutil.which("ip") is None:
        return "the `ip` command is missing: apt-get install iproute2 (or run scripts/install-test-servers.sh)"
    return None


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result


def namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]


def kill_namespace_processes(ns: str, grace: float = 5.0) -> None:
    """SIGTERM every process in `ns`, SIGKILL what is left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [int(p) for p in ip("netns", "pids", ns, check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and ip("netns", "pids", ns, check=False).stdout.split():
            time.sleep(0.05)


def delete_namespace(ns: str) -> None:
    kill_namespace_processes(ns)
    ip("netns", "delete", ns, check=False)
    shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)


def remove_prefix(prefix: str) -> None:
    """Deletes every namespace (and /etc/netns folder) named PREFIX-*."""
    for ns in namespaces():
        if ns.startswith(f"{prefix}-"):
            delete_namespace(ns)
    if NETNS_ETC.is_dir():
        for folder in NETNS_ETC.iterdir():
            if folder.name.startswith(f"{prefix}-"):
                shutil.rmtree(folder, ignore_errors=True)


def remove_stale() -> list[str]:
    """Removes what earlier runs left behind (their process is gone); returns their prefixes."""
    names = namespaces() + ([f.name for f in NETNS_ETC.iterdir()] if NETNS_ETC.is_dir() else [])
    stale = sorted({m.group(1) for m in map(_PREFIX_RE.match, names)
                    if m is not None and not pid_alive(int(m.group(2), 16))})
    for prefix in stale:
        remove_prefix(prefix)
    return stale


class Network:
    """Namespaces `PREFIX-HOST` on one bridge; `hosts` maps a host to (address suffix, names).

    Every hosts file lists every host's names, so each host resolves the others (and itself)."""

    def __init__(self, prefix: str, hosts: Mapping[str, tuple[int, tuple[str, ...]]]) -> None:
        self.prefix = prefix
        self.hosts = dict(hosts)
        self.switch = f"{prefix}-sw"

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def address(self, host: str) -> str:
        return f"{SUBNET}.{self.hosts[host][0]}"

    def exec_prefix(self, host: str) -> list[str]:
        """Prepend to a command to run it on `host` (its network and its /etc/hosts)."""
        return ["ip", "netns", "exec", self.ns(host)]

    def hosts_file(self) -> str:
        lines = ["127.0.0.1 localhost", "::1 localhost"]
        lines += [f"{self.address(h)} {' '.join(names)}" for h, (_, names) in self.hosts.items()]
        return "\n".join(lines) + "\n"

    def create(self) -> Network:
        """Makes the switch, the hosts and their links; undoes what it made if a step fails.
        Leftovers with this prefix (an earlier run of a process with the same id) go first."""
        remove_prefix(self.prefix)
        try:
            ip("netns", "add", self.switch)
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
            text = self.hosts_file()
            for host in self.hosts:
                ns = self.ns(host)
                ip("netns", "add", ns)
                ip("-n", ns, "link", "set", "lo", "up")
                ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", self.port(host),
                   "netns", self.switch)
                ip("-n", self.switch, "link", "set", self.port(host), "master", "br0", "up")
                ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
                ip("-n", ns, "link", "set", "eth0", "up")
                (NETNS_ETC / ns).mkdir(parents=True, exist_ok=True)
                (NETNS_ETC / ns / "hosts").write_text(text)
        except BaseException:
            self.destroy()
            raise
        return self

    def port(self, host: str) -> str:
        """The switch side of `host`'s veth (interface names are at most 15 characters)."""
        return f"v-{host}"[:15]

    def cut(self, host: str) -> None:
        ip("-n", self.switch, "link", "set", self.port(host), "down")

    def restore(self, host: str) -> None:
        ip("-n", self.switch, "link", "set", self.port(host), "up")

    def destroy(self) -> None:
        remove_prefix(self.prefix)
