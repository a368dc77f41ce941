"""Certificates made at test time (trustme): a private CA and node certificates.

`Pki(folder)` holds one CA; `node_files(name, hosts)` writes a node's certificate (valid for
`hosts`), its key and the CA bundle into `folder/name/` and returns their paths;
`secrets_folder(dest, host, secret)` writes the `secrets/` folder the files of
docker/node-configs/ name (cluster-secret, tls-cert.pem, tls-key.pem, tls-ca.pem).
`client_context()` is an SSL context trusting the CA (for test clients).

`Nodes` starts nodes of one cluster in the test's process (fixtures `pki` and `nodes`: a test
module imports them); `healthz`, `wait_healthy` and `wait_link_problem` read a node's /healthz.
"""

from __future__ import annotations

import datetime
import json
import secrets as random
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trustme

from vim_cluster.config import NodeConfig, load_config
from vim_cluster.node.app import RunningNode, serve_node

from ..cluster.harness import blocking
from ..support import free_port, write_config


@attrs.frozen
class NodeFiles:
    cert: Path
    key: Path
    ca: Path

    def tls(self, ca: Path | None = None) -> dict[str, str]:
        """The vim.websocket.tls mapping for these files (absolute paths)."""
        return {"cert-file": str(self.cert), "key-file": str(self.key), "ca-file": str(ca or self.ca)}


class Pki:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = trustme.CA(organization_name="vim-cluster tests")
        folder.mkdir(parents=True, exist_ok=True)
        self.ca_file = folder / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def node_files(self, name: str, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
                   not_after: datetime.datetime | None = None) -> NodeFiles:
        target = self.folder / name
        target.mkdir(parents=True, exist_ok=True)
        cert = self.ca.issue_cert(*hosts, not_after=not_after)
        files = NodeFiles(target / "cert.pem", target / "key.pem", self.ca_file)
        cert.private_key_pem.write_to_path(str(files.key))
        files.key.chmod(0o600)  # as openssl makes a key (`check` warns of one every user may read)
        with open(files.cert, "wb") as out:
            for blob in cert.cert_chain_pems:
                out.write(blob.bytes())
        return files

    def secrets_folder(self, dest: Path, host: str, secret: str | None = None) -> Path:
        """`dest/secrets/` as a node of docker/node-configs/ expects it, for `host`."""
        folder = dest / "secrets"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cluster-secret").write_text((secret or random.token_hex(32)) + "\n")
        cert = self.ca.issue_cert(host, "localhost", "127.0.0.1")
        cert.private_key_pem.write_to_path(str(folder / "tls-key.pem"))
        (folder / "tls-key.pem").chmod(0o600)
        with open(folder / "tls-cert.pem", "wb") as out:
            for blob in cert.cert_chain_pems:
                out.write(blob.bytes())
        self.ca.cert_pem.write_to_path(str(folder / "tls-ca.pem"))
        return folder

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


class Nodes:
    """Starts nodes of one cluster (one folder: shared secret and SQLite stores) in-process."""

    def __init__(self, nursery: trio.Nursery, folder: Path, redis_url: str) -> None:
        self.nursery = nursery
        self.folder = folder
        self.redis_url = redis_url
        self.running: list[RunningNode] = []

    async def start(self, node_id: str, tls: dict[str, str] | None, *, master_url: str | None = None,
                    wait: bool = True, websocket_keys: dict[str, Any] | None = None) -> tuple[RunningNode, NodeConfig]:
        websocket: dict[str, Any] = {"tls": tls} if tls else {}
        websocket.update(websocket_keys or {})
        path = write_config(self.folder, node_id=node_id, node_type="slave" if master_url else "master",
                            redis_url=self.redis_url, master_url=master_url, websocket=websocket,
                            extra={"http": {"port": free_port()}})
        config = load_config(path)
        running: RunningNode = await self.nursery.start(serve_node, config)
        self.running.append(running)
        return running, config


@pytest.fixture
async def nodes(nursery: trio.Nursery, tmp_path: Path, redis_url: str) -> AsyncIterator[Nodes]:
    started = Nodes(nursery, tmp_path / "cluster", redis_url)
    yield started
    for running in started.running:
        running.stop()


def healthz(config: NodeConfig, context: ssl.SSLContext | None) -> tuple[int, dict[str, Any]]:
    assert config.http_url is not None
    try:
        with urllib.request.urlopen(config.http_url + "healthz", timeout=5, context=context) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def wait_link_problem(config: NodeConfig, context: ssl.SSLContext | None, words: str) -> dict[str, Any]:
    """Polls the slave's /healthz (HTTPS) until its master_link check is down with `words`."""
    with trio.fail_after(20):
        while True:
            status, body = await blocking(healthz, config, context)
            if status == 503 and words in body["checks"]["master_link"]:
                return body
            await trio.sleep(0.1)


async def wait_healthy(config: NodeConfig, context: ssl.SSLContext | None) -> None:
    with trio.fail_after(20):
        while (await blocking(healthz, config, context))[0] != 200:
            await trio.sleep(0.1)


