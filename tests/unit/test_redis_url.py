"""`vim.redis.url`'s Sentinel form: redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis.exceptions

from vim_cluster.adapters.redis_registry import RedisRegistry
from vim_cluster.config import load_config
from vim_cluster.errors import ConfigError, StoreUnavailable
from vim_cluster.redis_url import SentinelUrl, parse_sentinel_url

from .test_config import config, write


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("redis+sentinel://127.0.0.1:26379/mymaster",
         SentinelUrl((("127.0.0.1", 26379),), "mymaster")),
        ("redis+sentinel://s1:26379,s2:26380, s3:26381/vim/2",
         SentinelUrl((("s1", 26379), ("s2", 26380), ("s3", 26381)), "vim", 2)),
        ("redis+sentinel://:p%40ss@[::1]:26379/vim",
         SentinelUrl((("::1", 26379),), "vim", 0, None, "p@ss")),
        ("redis+sentinel://app:secret@h:1/vim/0",
         SentinelUrl((("h", 1),), "vim", 0, "app", "secret")),
    ],
)
def test_sentinel_urls_parse(url: str, parsed: SentinelUrl) -> None:
    assert parse_sentinel_url(url) == parsed


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://127.0.0.1/vim", "each Sentinel must be HOST:PORT"),
        ("redis+sentinel://h:1,,h:2/vim", "each Sentinel must be HOST:PORT"),
        ("redis+sentinel://h:99999/vim", "each Sentinel must be HOST:PORT"),
        ("redis+sentinel://h:26379", "the path must be /SERVICE or /SERVICE/DB"),
        ("redis+sentinel://h:26379/vim/zero", "the path must be /SERVICE or /SERVICE/DB"),
        ("redis+sentinel://h:26379/vim/0/extra", "the path must be /SERVICE or /SERVICE/DB"),
        ("redis://h:6379/0", "not a redis+sentinel:// URL"),
    ],
)
def test_bad_sentinel_urls_say_what_is_wrong(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_sentinel_url(url)


def test_the_config_accepts_a_sentinel_url_and_names_the_key_of_a_bad_one(tmp_path: Path) -> None:
    good = "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/vim/1"
    assert load_config(write(tmp_path, config(redis={"url": good}))).redis.url == good
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, config(redis={"url": "redis+sentinel://10.0.0.1/vim"})))
    assert caught.value.key == "vim.redis.url" and "HOST:PORT" in caught.value.problem


@pytest.mark.parametrize("url", ["redis://:Top%2FSecret@127.0.0.1:1/0", "redis://app:TopSecret@127.0.0.1:1/0",
                                 "redis+sentinel://:TopSecret@127.0.0.1:1,127.0.0.2:1/vim"])
def test_a_redis_outage_names_the_url_without_its_password(url: str) -> None:
    """The message goes to the logs, /healthz on the open HTTP port and the CLI's stderr."""
    registry = RedisRegistry(url)
    with pytest.raises(StoreUnavailable) as caught, registry._errors():
        raise redis.exceptions.ConnectionError("Connection refused.")
    assert "TopSecret" not in str(caught.value) and ":***@127.0.0.1:1" in str(caught.value)
