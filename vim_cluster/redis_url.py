"""The Sentinel form of `vim.redis.url`, parsed (pure; the config checks it, the adapter uses it).

    redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]

The Sentinels (one or more, comma-separated) are asked which server is the primary of
SERVICE (the name in `sentinel monitor SERVICE ...`); USER and PASSWORD, if given, are the
Redis servers' credentials (the Sentinels are asked without them); DB defaults to 0.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import attrs

SENTINEL_SCHEME = "redis+sentinel"


@attrs.frozen
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Raises ValueError with what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL: {url!r}")
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    sentinels = []
    for host_port in hosts.split(","):
        host, _, port = host_port.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"each Sentinel must be HOST:PORT, got {host_port!r} in {url!r}")
        sentinels.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not 1 <= len(path) <= 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"the path must be /SERVICE or /SERVICE/DB, got {parts.path or '/'!r} in {url!r}")
    return SentinelUrl(tuple(sentinels), unquote(path[0]), int(path[1]) if len(path) == 2 else 0,
                       unquote(username) or None, unquote(password) or None)
