"""The operator's first hour (issue 10): `check`, $VIM_CLUSTER_CONFIG, whereis/kick exit codes,
users added with a prompt that does not echo (or --password-file), listed, given a new
password, and a taken port that stops a node with one line before it registers."""

from __future__ import annotations

import fcntl
import os
import select
import socket
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import redis

from vim_cluster import wiring
from vim_cluster.config import load_config
from vim_cluster.core.auth import verify_password

from ..cluster.harness import cli_env, run_cli
from ..support import PASSWORD, free_port, write_config
from .pki import Pki, pki

__all__ = ["pki"]  # fixture

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def config(tmp_path: Path, redis_url: str) -> Path:
    """A master's config (nothing running): SQLite stores, the test's Redis."""
    return write_config(tmp_path / "cluster", node_id="master", redis_url=redis_url,
                        extra={"http": {"port": free_port()}})


def add(config: Path, username: str, password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
    result = run_cli("user", "add", username, "--config", str(config), stdin=password + "\n")
    assert result.returncode == 0, result
    return result


def password_hash(config: Path, username: str) -> str:
    directory = wiring.open_directory(load_config(config))
    try:
        user = directory.user_by_username(username)
    finally:
        directory.close()
    assert user is not None
    return user.password_hash


def test_check_says_ok_or_exits_2_with_one_line(config: Path, tmp_path: Path) -> None:
    ok = run_cli("check", str(config))
    assert ok.returncode == 0 and ok.stdout == f"ok: {config} (master, master)\n", ok
    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace("forward-port", "forward-prt"))
    failed = run_cli("check", str(bad))
    assert failed.returncode == 2 and failed.stdout == "", failed
    assert failed.stderr.count("\n") == 1 and "vim.websocket.forward-prt: unknown key" in failed.stderr


def test_check_warns_of_master_only_keys_on_a_slave(tmp_path: Path, redis_url: str) -> None:
    """A slave ignores the forward channel's port and URL and the master lease: `check` says
    so (stderr, still exit 0), so a copied master config does not hide a mistake."""
    slave = write_config(tmp_path / "cluster", node_id="dept-a", node_type="slave", redis_url=redis_url,
                         master_url="ws://127.0.0.1:1/forward", websocket={"forward-port": free_port()},
                         extra={"cluster": {"master-lease-ttl": 8}})
    result = run_cli("check", str(slave))
    assert result.returncode == 0 and result.stdout == f"ok: {slave} (dept-a, slave)\n", result
    assert result.stderr.splitlines() == [
        f"warning: {slave}: vim.websocket.forward-port: ignored on a slave node (a master's port for the forward channel)",
        f"warning: {slave}: vim.cluster.master-lease-ttl: ignored on a slave node (a master's lease)"]


def test_check_warns_of_a_secret_file_that_others_may_read(config: Path) -> None:
    """`openssl rand -hex 32 > FILE`, as the docs make the secret, leaves it 0644 under the usual
    umask: only the node's log said so (`secret_file_too_open`), at its start; `check`, run
    before, said ok."""
    secret = load_config(config).cluster.secret_file
    secret.chmod(0o644)
    result = run_cli("check", str(config))
    assert result.returncode == 0 and result.stdout == f"ok: {config} (master, master)\n", result
    assert result.stderr == (f"warning: {config}: vim.cluster.secret-file: {secret} is mode 0644: others than its "
                             f"owner may read it, and whoever reads it can act as any user (chmod 600 {secret}; "
                             "docs/security.md)\n")
    secret.chmod(0o600)
    assert run_cli("check", str(config)).stderr == ""


def test_check_warns_of_a_password_file_or_tls_key_every_user_may_read(tmp_path: Path, pki: Pki) -> None:
    """A store's password made with `openssl rand -hex 24 > FILE` is 0644: every user of the host
    reads the database's password. Group-readable is left alone (the containers' password files
    are 0440, for the stores' and the nodes' group)."""
    files = pki.node_files("master", ("master",), None)
    folder = tmp_path / "cluster"
    folder.mkdir()
    (folder / "redis-password").write_text("a-password\n")
    (folder / "redis-password").chmod(0o644)
    config = write_config(folder, node_id="master", redis_url="redis://127.0.0.1:6379/0",
                          websocket={"public-host": "master", "tls": files.tls()},
                          extra={"redis": {"password-file": "redis-password"}})
    Path(files.tls()["key-file"]).chmod(0o604)
    result = run_cli("check", str(config))
    assert result.returncode == 0 and result.stdout == f"ok: {config} (master, master)\n", result
    assert result.stderr.splitlines() == [
        f"warning: {config}: vim.websocket.tls.key-file: {files.tls()['key-file']} is mode 0604: every user of this "
        f"host may read it (chmod 600 {files.tls()['key-file']})",
        f"warning: {config}: vim.redis.password-file: {folder / 'redis-password'} is mode 0644: every user of this "
        f"host may read it (chmod 600 {folder / 'redis-password'})"]
    (folder / "redis-password").chmod(0o640)
    Path(files.tls()["key-file"]).chmod(0o600)
    assert run_cli("check", str(config)).stderr == ""


def test_config_comes_from_the_environment(config: Path, tmp_path: Path) -> None:
    add(config, "erin")
    env = {**cli_env(), "VIM_CLUSTER_CONFIG": str(config)}
    listed = subprocess.run([sys.executable, "-m", "vim_cluster.cli", "user", "list"], capture_output=True,
                            text=True, timeout=60, env=env, cwd=tmp_path)
    assert listed.returncode == 0 and "erin" in listed.stdout, listed
    where = subprocess.run([sys.executable, "-m", "vim_cluster.cli", "whereis", "erin"], capture_output=True,
                           text=True, timeout=60, env=env, cwd=tmp_path)
    assert where.returncode == 1 and "no session" in where.stdout, where
    beat = subprocess.run([sys.executable, "-m", "vim_cluster.cli", "heartbeat"], capture_output=True,
                          text=True, timeout=60, env=env, cwd=tmp_path)
    assert beat.returncode == 1 and beat.stderr == "master: not registered in Redis\n", beat


@pytest.mark.parametrize("command", ["whereis", "kick"])
def test_whereis_and_kick_exit_1_for_no_session_and_2_for_no_such_user(config: Path, command: str) -> None:
    add(config, "frank")
    none = run_cli(command, "frank", "--config", str(config))
    assert none.returncode == 1 and "has no session" in none.stdout, none
    unknown = run_cli(command, "nobody-here", "--config", str(config))
    assert unknown.returncode == 2 and unknown.stderr == f"vim-cluster {command}: no such user: nobody-here\n"


def test_users_are_added_listed_and_given_a_new_password(config: Path, tmp_path: Path) -> None:
    password_file = tmp_path / "pw.txt"
    password_file.write_text("first password 1\n")
    added = run_cli("user", "add", "grace", "--name", "Grace H", "--password-file", str(password_file),
                    "--config", str(config))
    assert added.returncode == 0 and added.stdout.strip().isdigit(), added
    assert verify_password(password_hash(config, "grace"), "first password 1")
    listed = run_cli("user", "list", "--config", str(config))
    assert listed.returncode == 0, listed
    header, row = listed.stdout.splitlines()
    assert header.split() == ["ID", "USERNAME", "NAME", "DEPARTMENT"]
    assert row.split() == [added.stdout.strip(), "grace", "Grace", "H", "-"]
    run_cli("user", "add", "hopper", "--dept", "Engineering/Backend", "--password-file", str(password_file),
            "--config", str(config))
    assert listed_row(config, "hopper")[-1] == "Engineering/Backend"  # its path, not its id
    changed = run_cli("user", "passwd", "grace", "--config", str(config), stdin="second password 2\n")
    assert changed.returncode == 0 and "password of grace" in changed.stdout, changed
    assert verify_password(password_hash(config, "grace"), "second password 2")
    unknown = run_cli("user", "passwd", "nobody", "--config", str(config), stdin="second password 2\n")
    assert unknown.returncode == 2 and unknown.stderr == "vim-cluster user: no such user: nobody\n"
    short = run_cli("user", "passwd", "grace", "--config", str(config), stdin="x\n")
    assert short.returncode == 1 and "at least" in short.stderr
    both = run_cli("user", "passwd", "nobody", "--config", str(config), stdin="x\n")  # the unknown user first
    assert both.returncode == 2 and both.stderr == "vim-cluster user: no such user: nobody\n"


def test_user_list_writes_control_characters_of_names_as_escapes(config: Path, tmp_path: Path) -> None:
    """Attack: a user registers with a display name holding terminal escape sequences (clear
    the screen, move the cursor up over other rows, set the title, OSC 52 into the clipboard).
    Since 2026-12-03 such a name is refused (`register` and `user add --name` alike,
    core/names.py); one stored before, as here, is printed by `user list` as text, not to the
    operator's terminal."""
    password_file = tmp_path / "pw.txt"
    password_file.write_text("first password 1\n")
    name = "\x1b[2J\x1b[1A\rroot\x1b]52;c;ZWNobyBwd25lZA==\x07"
    refused = run_cli("user", "add", "mallory", "--name", name, "--password-file", str(password_file),
                      "--config", str(config))
    assert refused.returncode == 1 and "name must be 1 to 64 characters" in refused.stderr, refused
    added = run_cli("user", "add", "mallory", "--password-file", str(password_file), "--config", str(config))
    assert added.returncode == 0, added
    directory = wiring.open_directory(load_config(config))
    try:  # the row as an older release stored it
        with directory._db.transaction() as db:  # type: ignore[attr-defined]
            db.execute("UPDATE users SET name = ? WHERE username = 'mallory'", (name,))
    finally:
        directory.close()
    listed = run_cli("user", "list", "--config", str(config))
    assert listed.returncode == 0 and "\x1b" not in listed.stdout and "\r" not in listed.stdout, listed
    assert "\\x1b[2J\\x1b[1A\\rroot\\x1b]52;c;ZWNobyBwd25lZA==\\x07" in listed.stdout, listed.stdout


def listed_row(config: Path, username: str) -> list[str]:
    listed = run_cli("user", "list", "--config", str(config))
    assert listed.returncode == 0, listed
    return next(line.split() for line in listed.stdout.splitlines() if f" {username} " in line)


def _read_until(fd: int, words: bytes, seen: bytearray, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while words not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {words!r} in {bytes(seen)!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                chunk = b""
            assert chunk, f"the terminal closed before {words!r}: {bytes(seen)!r}"
            seen += chunk


def test_user_add_on_a_terminal_prompts_twice_without_echo(config: Path) -> None:
    """The command runs on a pseudo-terminal of its own (its controlling tty, as in a shell):
    what it writes and what the terminal echoes is read back; the password never appears."""
    secret = "terminal password 7"
    controller, terminal = os.openpty()

    def become_session_leader() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    process = subprocess.Popen(
        [sys.executable, "-m", "vim_cluster.cli", "user", "add", "hana", "--config", str(config)],
        stdin=terminal, stdout=terminal, stderr=terminal, env=cli_env(), preexec_fn=become_session_leader)
    os.close(terminal)
    seen = bytearray()
    try:
        _read_until(controller, b"Password: ", seen)
        os.write(controller, secret.encode() + b"\n")
        _read_until(controller, b"Again: ", seen)
        os.write(controller, secret.encode() + b"\n")
        assert process.wait(60) == 0
        try:
            while chunk := os.read(controller, 4096):
                seen += chunk
        except OSError:
            pass
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
    assert secret.encode() not in seen, bytes(seen)
    assert verify_password(password_hash(config, "hana"), secret)


@pytest.mark.parametrize("key", ["vim.websocket.port", "vim.websocket.forward-port", "vim.http.port"])
def test_a_taken_port_is_one_line_naming_key_and_port_exit_2_and_never_registered(
    config: Path, redis_url: str, key: str
) -> None:
    loaded = load_config(config)
    port = {"vim.websocket.port": loaded.websocket.port, "vim.websocket.forward-port": loaded.websocket.forward_port,
            "vim.http.port": loaded.http.port}[key]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        result = run_cli("run", str(config), timeout=60)
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"vim-cluster: master: {key} {port}: cannot listen on 127.0.0.1:{port}: "
                               "Address already in use"), lines
    with redis.Redis.from_url(redis_url) as client:
        assert not [k for k in client.keys("*") if b"master" in k], client.keys("*")
    listed = run_cli("nodes", "--config", str(config))
    table = listed.stdout.split("\n\n")[0]  # the master summary follows a blank line
    rows = table.splitlines()[1:]  # under the header: no node at all (it never registered)
    assert listed.returncode == 0 and not [row for row in rows if "master" in row], listed
