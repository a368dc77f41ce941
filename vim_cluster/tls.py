"""TLS contexts from a node's config (vim.websocket.tls.*).

- `server_context`: the node's certificate and key; with it the client listener is wss://,
  the master's forward listener wss:// and the HTTP port HTTPS. None without TLS.
- `client_context`: what a slave (or an operator tool) uses to reach the master over wss://:
  the CA bundle of vim.websocket.tls.ca-file, else the system's CAs; the certificate must be
  valid for the host named in the URL (hostname checked).
- `local_probe_context`: for a node's own HTTPS port on 127.0.0.1 (`vim-cluster heartbeat`):
  the chain is verified against the CA, the name is not (the certificate names the host, the
  probe dials loopback).
- `check_certificate` / `certificate_problems`: what `check` and a node's start warn of in its
  own certificate (it does not name the host the node advertises, it expired, or it expires
  within 14 days), and its end date (the metric `vim_tls_certificate_expiry_timestamp_seconds`).
"""

from __future__ import annotations

import ipaddress
import ssl
import time

import attrs

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


EXPIRY_WARNING_S = 14 * 86400


@attrs.frozen
class CertificateCheck:
    problems: list[str]  # one line each
    not_after: float | None  # the certificate's end (Unix seconds), if the handshake got that far


def certificate_problems(config: NodeConfig, now: float | None = None) -> list[str]:
    return check_certificate(config, now).problems


def check_certificate(config: NodeConfig, now: float | None = None) -> CertificateCheck:
    """The problems of the node's certificate that clients and the other nodes would hit, one
    line each: not valid for the host it advertises (vim.websocket.public-host, else host; not
    checked for a loopback host, which only local tools dial), expired or not yet valid, or
    expiring within 14 days. Found by a TLS handshake in memory against the node's own
    context, with the certificate itself as the trust anchor (so only the name and the dates
    are judged, not the CA); none without TLS."""
    server = server_context(config)
    if server is None:
        return CertificateCheck([], None)
    cert = config.websocket.tls_cert
    host = config.public_host.strip("[]")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cafile=str(cert))
    client.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    client.check_hostname = not is_loopback(host)
    try:
        peer = _handshake(server, client, host)
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            return CertificateCheck([f"the certificate {cert} is not valid for {host}, the host this node advertises "
                                     "(vim.websocket.public-host, else host): clients and nodes that dial it refuse it"],
                                    None)
        return CertificateCheck([f"the certificate {cert} is refused by clients: {exc.verify_message}"], None)
    except (ssl.SSLError, HandshakeUnfinished) as exc:  # what the name and dates cannot tell
        return CertificateCheck([f"the certificate {cert} could not be checked: a TLS handshake with it failed "
                                 f"({exc})"], None)
    not_after = float(ssl.cert_time_to_seconds(str(peer["notAfter"])))
    left = not_after - (time.time() if now is None else now)
    if left < EXPIRY_WARNING_S:
        return CertificateCheck([f"the certificate {cert} expires in {left / 86400:.1f} days ({peer['notAfter']}): "
                                 "renew it"], not_after)
    return CertificateCheck([], not_after)


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, host: str) -> dict[str, object]:
    """A TLS handshake between two contexts through memory buffers; the client's view of the
    server's certificate."""
    buffers = [ssl.MemoryBIO() for _ in range(4)]
    near = client.wrap_bio(buffers[0], buffers[1], server_hostname=host)
    far = server.wrap_bio(buffers[2], buffers[3], server_side=True)
    done = [False, False]
    for _ in range(10):  # TLS 1.3 takes 2 round trips, 1.2 at most 3
        for i, end in enumerate((near, far)):
            if not done[i]:
                try:
                    end.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
        buffers[2].write(buffers[1].read())
        buffers[0].write(buffers[3].read())
        if all(done):
            break
    peer = near.getpeercert() if done[0] else None  # (it raises ValueError before the end)
    if not peer:
        raise HandshakeUnfinished("the handshake in memory did not finish")
    return dict(peer)


class HandshakeUnfinished(Exception):
    pass
