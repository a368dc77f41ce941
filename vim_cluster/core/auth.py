"""Passwords (argon2id through argon2-cffi) and tokens (HS256 JWTs through PyJWT).

Tokens are signed with the cluster secret, so any node verifies any node's tokens. Time is
passed in (`now_ms`), never read here.
"""

from __future__ import annotations

import argon2
import jwt

from ..errors import ClientError, ErrorKind

TOKEN_TTL_MS = 7 * 24 * 3600 * 1000
ISSUER = "vim-cluster"

# OWASP's argon2id minimum (19 MiB, 2 passes): ~15 ms a hash on one core.
_hasher = argon2.PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except argon2.exceptions.VerificationError:
        return False
    except argon2.exceptions.InvalidHashError:
        return False


# A hash to verify against when the username does not exist, so that the answer takes as long
# as for a wrong password (no user enumeration by timing).
DUMMY_HASH = _hasher.hash("no such user: dummy password")


class TokenIssuer:
    def __init__(self, secret: bytes, ttl_ms: int = TOKEN_TTL_MS) -> None:
        self._secret = secret
        self._ttl_ms = ttl_ms

    def issue(self, user_id: int, now_ms: int) -> tuple[str, int]:
        """A token for `user_id` and its expiry time in ms."""
        expires_at = now_ms + self._ttl_ms
        claims = {"sub": str(user_id), "iss": ISSUER, "iat": now_ms // 1000, "exp_ms": expires_at}
        return jwt.encode(claims, self._secret, algorithm="HS256"), expires_at

    def verify(self, token: str, now_ms: int) -> int:
        """The user id of a valid token; ClientError(unauthorized) for a bad or expired one."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                issuer=ISSUER,
                options={"require": ["sub", "iss", "exp_ms"]},
            )
            user_id = int(claims["sub"])
            expires_at = int(claims["exp_ms"])
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise ClientError(ErrorKind.UNAUTHORIZED, "the token is not valid") from None
        if expires_at <= now_ms:
            raise ClientError(ErrorKind.UNAUTHORIZED, "the token has expired")
        return user_id
