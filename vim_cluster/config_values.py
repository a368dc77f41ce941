"""Value checkers for config keys (config.py's SCHEMA): each returns the converted value or
raises ValueError(problem); a nested mapping's problem is a SubkeyError naming its key."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from .core.origins import ANY, normal
from .redis_url import SENTINEL_SCHEME, parse_sentinel_url


def redact(url: str) -> str:
    """The URL without its password, for messages and logs (a store's or Redis's)."""
    password = urlsplit(url).password
    return url if password is None else url.replace(f":{password}@", ":***@", 1)


HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")


def public_host(value: Any) -> str:
    """A DNS name or an IP address (no scheme, no port)."""
    text = string(value)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not HOSTNAME_RE.match(text):
            raise ValueError(f"must be a host name or IP address, got {value!r}") from None
    return text


def int_range(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be an integer from {low} to {high}, got {value!r}")
        return value

    return check


def positive_number(value: Any) -> float:
    # `not value > 0` rather than `value <= 0`: NaN compares false both ways and must fail.
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        text = " (text: YAML reads 1e3 as text, write 1.0e+3 or 1000)" if isinstance(value, str) else ""
        raise ValueError(f"must be a positive number, got {value!r}{text}")
    return float(value)


def seconds_up_to(most: float) -> Callable[[Any], float]:
    """A positive number of seconds no larger than `most` (infinity and absurd values, such as
    a lease that never lapses, are refused)."""
    def check(value: Any) -> float:
        number = positive_number(value)
        if not number <= most:
            raise ValueError(f"must be a positive number of seconds up to {most:,g}, got {value!r}")
        return number

    return check


def origins(value: Any) -> tuple[str, ...]:
    """vim.websocket.allowed-origins: web origins (scheme://host[:port]) or `*`, as a list or
    one comma-separated string."""
    items = [part.strip() for part in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"must be a list of origins (https://host[:port]) or '*', got {value!r}")
    for item in items:
        if item != ANY and normal(item) is None:
            raise ValueError(f"each origin must be scheme://host[:port] or '*', got {item!r}")
    return tuple(items)


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string, got {value!r}")
    return value


def ws_url(value: Any) -> str:
    text = string(value)
    parts = urlsplit(text)
    if parts.scheme not in ("ws", "wss") or not parts.hostname or parts.port is None:
        raise ValueError(f"must be a ws:// or wss:// URL with host and port, got {value!r}")
    return text


def ws_urls(value: Any) -> tuple[str, ...]:
    """One ws:// URL, several separated by commas, or a list of them (candidates, in order)."""
    items = [part.strip() for part in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise ValueError(f"must be a ws:// or wss:// URL, a comma-separated list or a list of them, got {value!r}")
    return tuple(dict.fromkeys(ws_url(item) for item in items))


class SubkeyError(ValueError):
    """A problem with one key of a nested mapping (e.g. vim.websocket.tls.cert-file)."""

    def __init__(self, subkey: str, problem: str) -> None:
        super().__init__(problem)
        self.subkey = subkey


TLS_KEYS = ("cert-file", "key-file", "ca-file")


def tls_section(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a mapping of {', '.join(TLS_KEYS)}, got {value!r}")
    for key in value:
        if key not in TLS_KEYS:
            raise SubkeyError(str(key), f"unknown key (known: {', '.join(TLS_KEYS)})")
    found: dict[str, str] = {}
    for key in TLS_KEYS:
        if value.get(key) is not None:
            try:
                found[key] = string(value[key])
            except ValueError as exc:
                raise SubkeyError(key, str(exc)) from None
    return found


def redis_url(value: Any) -> str:
    text = string(value)
    scheme = urlsplit(text).scheme
    if scheme == SENTINEL_SCHEME:
        parse_sentinel_url(text)  # ValueError says what is wrong
    elif text != "embedded" and scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"must be 'embedded' or a redis://, rediss://, unix:// or "
                         f"{SENTINEL_SCHEME}://HOST:PORT[,HOST:PORT...]/SERVICE[/DB] URL, got {value!r}")
    return text
