"""TLS contexts from a node's config (vim.websocket.tls.*).

- `server_context`: the node's certificate and key; with it the client listener is wss://,
  the master's forward listener wss:// and the HTTP port HTTPS. None without TLS.
- `client_context`: what a slave (or an operator tool) uses to reach the master over wss://:
  the CA bundle of vim.websocket.tls.ca-file, else the system's CAs; the certificate must be
  valid for the host named in the URL (hostname checked).
- `local_probe_context`: for a node's own HTTPS port on 127.0.0.1 (`vim-cluster heartbeat`):
  the chain is verified against the CA, the name is not (the certificate names the host, the
  probe dials loopback).
"""

from __future__ import annotations

import ipaddress
import ssl

from .config import NodeConfig


def server_context(config: NodeConfig) -> ssl.SSLContext | None:
    ws = config.websocket
    if ws.tls_cert is None or ws.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(ws.tls_cert, ws.tls_key)
    return context


def client_context(config: NodeConfig, *, check_name: bool = True) -> ssl.SSLContext:
    """Verifies the peer's chain against tls.ca-file (or the system CAs) and, unless
    `check_name` is False, that its certificate is valid for the host dialled."""
    ca = config.websocket.tls_ca
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_name
    return context


def operator_context(config: NodeConfig, host: str) -> ssl.SSLContext:
    """An operator tool's context: like a slave's, but on a loopback `host` (the tool runs on
    the master's own host, whose certificate names the host, not 127.0.0.1) only the chain."""
    return client_context(config, check_name=not is_loopback(host))


def local_probe_context(config: NodeConfig) -> ssl.SSLContext:
    return client_context(config, check_name=False)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
