"""vim.websocket.tls.{cert-file,key-file,ca-file}: relative to the config's folder, loaded at
load time (a bad certificate is one config error), the older tls-cert/tls-key still work."""

from __future__ import annotations

from pathlib import Path

import pytest

from vim_cluster.config import load_config

from ..deploy.pki import Pki
from .test_config import config, config_error, write


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    pki = Pki(tmp_path / "conf" / "tls")
    pki.node_files("node")
    return pki


def test_tls_files_are_relative_to_the_config_folder_and_make_the_urls_secure(pki: Pki, tmp_path: Path) -> None:
    tls = {"cert-file": "tls/node/cert.pem", "key-file": "tls/node/key.pem", "ca-file": "tls/ca.pem"}
    loaded = load_config(write(tmp_path / "conf", config(websocket={"tls": tls})))
    folder = (tmp_path / "conf").resolve()
    assert loaded.websocket.tls_cert == folder / "tls/node/cert.pem"
    assert loaded.websocket.tls_key == folder / "tls/node/key.pem"
    assert loaded.websocket.tls_ca == folder / "tls/ca.pem"
    assert loaded.client_url == "wss://127.0.0.1:8180/" and loaded.http_url == "https://127.0.0.1:8190/"


def test_the_older_keys_still_work(pki: Pki, tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path / "conf", config(
        websocket={"tls-cert": "tls/node/cert.pem", "tls-key": "tls/node/key.pem"})))
    assert loaded.websocket.tls and loaded.websocket.tls_ca is None
    assert loaded.client_url.startswith("wss://")


def test_a_ca_file_alone_keeps_the_listeners_plain(pki: Pki, tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path / "conf", config(websocket={"tls": {"ca-file": "tls/ca.pem"}})))
    assert not loaded.websocket.tls and loaded.client_url.startswith("ws://")
    assert loaded.websocket.tls_ca is not None


@pytest.mark.parametrize(("websocket", "key", "words"), [
    ({"tls": {"cert-file": "tls/node/cert.pem"}}, "vim.websocket.tls.cert-file", "go together"),
    ({"tls": {"cert": "x"}}, "vim.websocket.tls.cert", "unknown key"),
    ({"tls": "yes"}, "vim.websocket.tls", "must be a mapping"),
    ({"tls": {"ca-file": 3}}, "vim.websocket.tls.ca-file", "non-empty string"),
    ({"tls": {"ca-file": "missing.pem"}}, "vim.websocket.tls.ca-file", "cannot read"),
    ({"tls": {"cert-file": "tls/node/key.pem", "key-file": "tls/node/key.pem"}},
     "vim.websocket.tls.cert-file", "cannot load the certificate"),
    ({"tls": {"cert-file": "tls/node/cert.pem", "key-file": "tls/node/key.pem", "ca-file": "tls/node/key.pem"}},
     "vim.websocket.tls.ca-file", "cannot load CA certificates"),
    ({"tls": {"cert-file": "tls/node/cert.pem", "key-file": "tls/node/key.pem"}, "tls-cert": "tls/node/cert.pem"},
     "vim.websocket.tls-cert", "not both"),
])
def test_tls_problems_are_one_line_naming_the_key(pki: Pki, tmp_path: Path, websocket: dict, key: str,
                                                  words: str) -> None:
    error = config_error(write(tmp_path / "conf", config(websocket=websocket)))
    assert error.key == key and words in error.problem, error
