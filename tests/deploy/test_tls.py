"""TLS (vim.websocket.tls.*): wss:// for clients and the forward link, HTTPS for the HTTP port.

Certificates are made at run time (trustme). The nodes run in the test's process on free
ports; the slave reaches the master through a recording TCP proxy where a test reads the
forward link's bytes the way a sniffer would.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import secrets
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio

from vim_cluster import bench, tls
from vim_cluster.config import load_config

from ..cluster.harness import blocking, cli_env, run_cli
from ..cluster.proxy import TcpProxy
from ..support import NodeProcess, free_port, online, write_config
from .pki import Nodes, Pki, healthz, nodes, pki, wait_healthy, wait_link_problem

__all__ = ["nodes", "pki"]  # fixtures


async def test_a_client_chats_over_wss_and_the_http_port_is_https(nodes: Nodes, pki: Pki) -> None:
    master, config = await nodes.start("master", pki.node_files("master").tls())
    url = config.client_url
    assert url == f"wss://127.0.0.1:{master.client_port}/"
    context = pki.client_context()
    async with contextlib.AsyncExitStack() as stack:
        alice = await online(stack, url, "alice", ssl_context=context)
        bob = await online(stack, url, "bob", ssl_context=context)
        assert bob.user_id is not None
        await alice.chat(bob.user_id, "hello over tls", "c-1")
        assert (await bob.expect("message"))["content"] == "hello over tls"
    status, body = await blocking(healthz, config, context)
    assert status == 200 and body["url"] == url
    assert config.http_url is not None and config.http_url.startswith("https://")
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):  # not the system's CAs
        await blocking(healthz, config, ssl.create_default_context())
    # The operator's cookie over HTTPS is Secure: never sent to a plain-HTTP port of the host.
    login = urllib.request.Request(config.http_url + "login", method="POST", headers={"content-type": "application/json"},
                                   data=b'{"secret": "%s", "name": "ops"}' % config.cluster.secret)
    with await blocking(lambda: urllib.request.urlopen(login, timeout=5, context=context)) as answer:
        assert answer.status == 200 and answer.headers["set-cookie"].endswith("; Secure")
    expiry = [line for line in master.ctx.metrics.render().decode().splitlines()
              if line.startswith("vim_tls_certificate_expiry_timestamp_seconds")]
    assert len(expiry) == 1 and float(expiry[0].split()[-1]) > time.time() + 300 * 86400  # trustme: years ahead


async def test_a_connection_over_a_cap_is_refused_over_tls_too(nodes: Nodes, pki: Pki) -> None:
    """The client port at its node-wide cap answers a wss:// connection 503 through TLS."""
    master, config = await nodes.start("master", pki.node_files("master").tls(), websocket_keys={"max-connections": 1})
    with trio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            await online(stack, config.client_url, "alice", ssl_context=pki.client_context())
            tcp = await trio.open_tcp_stream("127.0.0.1", master.client_port)
            stream = trio.SSLStream(tcp, pki.client_context(), server_hostname="127.0.0.1")
            async with stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                answer = b""
                with contextlib.suppress(trio.BrokenResourceError):  # TLS: the node ends without close_notify
                    while chunk := await stream.receive_some(65536):
                        answer += chunk
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer
    assert answer.endswith(b"\r\n\r\nconnection limit: the node holds as many connections as it takes (1); "
                           b"retry later\n"), answer


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
async def test_cross_node_delivery_over_the_forward_link_and_what_a_sniffer_reads(
    nodes: Nodes, pki: Pki, nursery: trio.Nursery, tls: bool
) -> None:
    files = pki.node_files("master")
    master, _ = await nodes.start("master", files.tls() if tls else None)
    assert master.forward_port is not None
    proxy = TcpProxy(master.forward_port, record=True)
    await nursery.start(proxy.run)
    scheme = "wss" if tls else "ws"
    slave_tls = pki.node_files("dept-1").tls() if tls else None
    _, slave = await nodes.start("dept-1", slave_tls, master_url=f"{scheme}://127.0.0.1:{proxy.port}/forward")
    context = pki.client_context() if tls else None
    await wait_healthy(slave, context)

    secret_words = f"the plaintext {secrets.token_hex(8)}"
    async with contextlib.AsyncExitStack() as stack:
        # master -> slave: the direction whose WebSocket frames are not masked (RFC 6455 masks
        # a client's frames), so that without TLS the words travel as they are
        alice = await online(stack, nodes.running[0].ctx.config.client_url, "alice", ssl_context=context)
        bob = await online(stack, slave.client_url, "bob", ssl_context=context)
        assert bob.user_id is not None
        await alice.chat(bob.user_id, secret_words, "c-1")
        assert (await bob.expect("message", timeout=10))["content"] == secret_words
    assert len(proxy.carried) > 1000 and proxy.accepted == 1
    # Without TLS the sniffer reads the message (so the check below can fail); with TLS not.
    assert (secret_words.encode() in proxy.carried) is not tls


async def test_a_slave_refuses_a_master_certificate_from_another_ca(nodes: Nodes, pki: Pki, tmp_path: Path) -> None:
    """The slave runs as `vim-cluster run` here: its log is read as an operator reads it."""
    master, _ = await nodes.start("master", pki.node_files("master").tls())
    other = Pki(tmp_path / "other-pki")
    master_url = f"wss://127.0.0.1:{master.forward_port}/forward"
    path = write_config(nodes.folder, node_id="dept-1", node_type="slave", redis_url=nodes.redis_url,
                        master_url=master_url, websocket={"tls": pki.node_files("dept-1").tls(ca=other.ca_file)},
                        extra={"http": {"port": free_port()}})
    slave = load_config(path)
    process = NodeProcess(path, slave.websocket.port, env=cli_env())
    try:
        await blocking(process.start)
        body = await wait_link_problem(slave, pki.client_context(), "TLS certificate verification failed")
        problem = body["checks"]["master_link"]
        assert problem == (f"down: cannot reach {master_url}: TLS certificate verification failed for "
                           "127.0.0.1: unable to get local issuer certificate"), problem
        assert "dept-1" not in master.ctx.delivery.cluster.peers  # type: ignore[attr-defined]
    finally:
        await blocking(process.stop)
    lines = [line for line in process.log.read_text().splitlines() if "forward_link_failed" in line]
    assert len(lines) == 1, lines  # once per cause, not once per retry
    assert master_url in lines[0] and "TLS certificate verification failed for 127.0.0.1" in lines[0]


async def test_a_slave_refuses_a_master_certificate_for_another_host(nodes: Nodes, pki: Pki) -> None:
    master, _ = await nodes.start("master", pki.node_files("master", hosts=("master.example",)).tls())
    master_url = f"wss://localhost:{master.forward_port}/forward"
    _, slave = await nodes.start("dept-1", pki.node_files("dept-1").tls(), master_url=master_url)
    body = await wait_link_problem(slave, pki.client_context(), "mismatch")
    # The slave tries its configured candidate and the URL the master published in Redis
    # (127.0.0.1): both are refused, and the problem names the one tried last.
    problems = {
        host: (f"down: cannot reach wss://{host}:{master.forward_port}/forward: TLS certificate verification "
               f"failed for {host}: {kind} mismatch, certificate is not valid for '{host}'.")
        for host, kind in (("localhost", "Hostname"), ("127.0.0.1", "IP address"))
    }
    assert body["checks"]["master_link"] in problems.values(), body["checks"]["master_link"]


async def test_operator_commands_work_against_a_tls_master(nodes: Nodes, pki: Pki) -> None:
    """nodes, heartbeat, whereis and kick on the master's host; its certificate names the host
    ("master", as in docker/), not 127.0.0.1: the loopback tools verify the chain only."""
    master, config = await nodes.start("master", pki.node_files("master", hosts=("master",)).tls())
    client_context = ssl.create_default_context()
    pki.ca.configure_trust(client_context)
    client_context.check_hostname = False  # the test client dials 127.0.0.1
    file = str(config.file)
    async with contextlib.AsyncExitStack() as stack:
        carol = await online(stack, config.client_url, "carol", ssl_context=client_context)
        listed = await blocking(run_cli, "nodes", "--config", file)
        assert listed.returncode == 0 and "wss://127.0.0.1" in listed.stdout, listed
        beat = await blocking(run_cli, "heartbeat", file)
        assert beat.returncode == 0 and "alive" in beat.stdout, beat
        where = await blocking(run_cli, "whereis", "carol", "--config", file)
        assert where.returncode == 0 and "master" in where.stdout, where
        kick = await blocking(run_cli, "kick", "carol", "--config", file)
        assert kick.returncode == 0, kick
        assert (await carol.expect_closed(10)).code == 4002


async def test_the_load_generator_runs_over_wss_trusting_the_ca_file(
        nodes: Nodes, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """`vim-cluster bench --ca-file` sets SSL_CERT_FILE: the message scenarios' lean client
    (node/ws_open.open_link) trusts it, as trio-websocket's default context does for user creation."""
    _, config = await nodes.start("master", pki.node_files("master").tls())
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    url = config.client_url
    with trio.fail_after(30):
        accounts = await bench.create_users(url, 2, "bench-tls")
        args = argparse.Namespace(size=20, duration=0, messages=10, window=4, rate=0)
        result = await bench.run_pair(url, url, accounts[:1], accounts[1:], args)
    assert url.startswith("wss://") and (result["delivered"], result["lost"], result["errors"]) == (10, 0, 0)


def test_check_warns_of_a_certificate_for_another_host_or_near_its_end(pki: Pki, tmp_path: Path, redis_url: str) -> None:
    """`check` (and the node's start, in its log) warns when the certificate would be refused
    by those who dial the host the node advertises, or soon will be; the config stays valid."""
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3)
    cases = {"good": (("chat.example",), None), "other": (("other.example",), None), "soon": (("chat.example",), soon)}
    warnings = {}
    for name, (hosts, not_after) in cases.items():
        files = pki.node_files(name, hosts, not_after)
        config = write_config(tmp_path / "cluster", node_id=name, redis_url=redis_url,
                              websocket={"public-host": "chat.example", "tls": files.tls()})
        result = run_cli("check", str(config))
        assert result.returncode == 0 and result.stdout == f"ok: {config} ({name}, master)\n", result
        warnings[name] = result.stderr
    assert warnings["good"] == ""
    assert warnings["other"].count("\n") == 1 and f"{tmp_path}/pki/other/cert.pem is not valid for chat.example" \
        in warnings["other"]
    assert warnings["soon"].count("\n") == 1 and "expires in 3.0 days" in warnings["soon"]


@pytest.mark.parametrize("failure", [ssl.SSLError(1, "[SSL: NO_SHARED_CIPHER] no shared cipher"),
                                     tls.HandshakeUnfinished("the handshake in memory did not finish")])
def test_a_certificate_check_that_cannot_finish_is_a_line_not_a_crash(
        pki: Pki, tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, failure: Exception) -> None:
    """The node's start and `check` run the check: a handshake failing for a reason other than
    the name or the dates is reported as one line too."""
    files = pki.node_files("odd", ("chat.example",))
    config = load_config(write_config(tmp_path / "cluster", node_id="odd", redis_url=redis_url,
                                      websocket={"public-host": "chat.example", "tls": files.tls()}))

    def fail(*_: object) -> dict[str, object]:
        raise failure

    monkeypatch.setattr(tls, "_handshake", fail)
    (problem,) = tls.certificate_problems(config)
    assert problem.startswith(f"the certificate {files.cert} could not be checked: a TLS handshake with it failed")
