"""Token forgery and replay, against `ready` and against the handshake URL (PROTOCOL.md §1:
a bad token in the URL is refused with HTTP 401)."""

from __future__ import annotations

import base64
import contextlib
import json
import time

import jwt
import trio

from vim_cluster.core.auth import ISSUER, TokenIssuer

from ..cluster.harness import Cluster
from ..support import connect, online
from .attack import handshake_status, name, watch


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def forgeries(valid: str, user_id: str, secret: bytes) -> dict[str, str]:
    """Tokens an attacker could make, each of which must be refused."""
    header, payload, signature = valid.split(".")
    claims = {"sub": user_id, "iss": ISSUER, "iat": _now_ms() // 1000, "exp_ms": _now_ms() + 3600_000}
    other_user = json.loads(base64.urlsafe_b64decode(payload + "=="))
    other_user["sub"] = str(int(user_id) + 1)
    flipped = signature[:-2] + ("AA" if not signature.endswith("AA") else "BB")
    return {
        "bad signature": f"{header}.{payload}.{flipped}",
        "claims changed, signature kept": f"{header}.{_b64(other_user)}.{signature}",
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.",
        "HS256 with another secret": jwt.encode(claims, b"not the cluster secret, but long enough: 64 bytes of it, really!!", algorithm="HS256"),
        "HS512 with the real secret (algorithm confusion)": jwt.encode(claims, secret, algorithm="HS512"),
        "expired (real secret)": TokenIssuer(secret, ttl_ms=1000).issue(int(user_id), _now_ms() - 10_000)[0],
        "user that does not exist (real secret)": TokenIssuer(secret).issue(4242424242, _now_ms())[0],
        "no exp_ms claim": jwt.encode({"sub": user_id, "iss": ISSUER}, secret, algorithm="HS256"),
        "wrong issuer": jwt.encode({**claims, "iss": "someone-else"}, secret, algorithm="HS256"),
        "sub not a number": jwt.encode({**claims, "sub": "alice"}, secret, algorithm="HS256"),
        "garbage": "not.a.token",
    }


async def test_forged_tokens_are_refused_in_ready_and_in_the_handshake(cluster: Cluster, secret: bytes) -> None:
    """Attack: present forged tokens (bad signature, alg=none, another secret, algorithm
    confusion, tampered claims, expired, a non-existent user's) to `ready` and in the
    handshake URL of every node. Defended: `ready` answers `unauthorized` and the connection
    stays anonymous; the handshake is refused with HTTP 401; no session opens anywhere."""
    with trio.fail_after(40):
        async with watch(cluster, cluster.dept1), contextlib.AsyncExitStack() as stack:
            victim = await online(stack, cluster.master.url, name("victim"))
            assert victim.token is not None and victim.user_id is not None
            for what, token in forgeries(victim.token, victim.user_id, secret).items():
                node = list(cluster.nodes.values())[len(what) % 3]
                status = await handshake_status(node.port, f"/?token={token}&client=pc")
                assert status == 401, (what, status)
                async with connect(node.url) as attacker:
                    await attacker.send("ready", token=token, client="pc", rid=what[:60])
                    error = await attacker.expect_error("unauthorized")
                    assert error["rid"] == what[:60]
                    await attacker.send("contacts")  # still anonymous
                    await attacker.expect_error("unauthorized")
            # no forged session replaced it, on any node
            await cluster.no_relayed_frame("other-login", [victim], *cluster.nodes.values())


async def test_a_replayed_token_is_a_bearer_credential_that_evicts_the_victims_session(cluster: Cluster) -> None:
    """Attack: replay a captured (valid) token on another node with the victim's client
    type. Defended as designed: the token works until it expires (a bearer credential: TLS
    keeps it from being captured), but the victim's session of that client type gets
    `other-login` naming the node, so the takeover is visible; the victim's other devices
    stay. A replayed token that expired is refused everywhere."""
    with trio.fail_after(30):
        async with watch(cluster, cluster.dept2), contextlib.AsyncExitStack() as stack:
            victim = await online(stack, cluster.master.url, name("replayed"), client="pc")
            phone = await stack.enter_async_context(connect(cluster.dept1.url))
            await phone.ready(token=victim.token, client="android")
            attacker = await stack.enter_async_context(connect(cluster.dept2.url))
            await attacker.ready(token=victim.token, client="pc")
            notice = await victim.expect("other-login")
            assert notice["nodeId"] == cluster.dept2.name
            await cluster.no_relayed_frame("other-login", [phone], cluster.dept2)  # the attacker's node
