"""`vim.store.directory-password-file`, `vim.store.messages-password-file` and
`vim.redis.password-file`: a database password read from a file of its own (a compose secret,
the file MariaDB's and MongoDB's images read through *_FILE), so that the config holds none.
The password goes into the URL percent-encoded; every misuse is one ConfigError naming the key."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from pymongo import uri_parser

from vim_cluster.adapters.mysql_base import connect_params
from vim_cluster.config import load_config
from vim_cluster.config_values import redact

from .test_config import config, config_error, write

PASSWORD = "p@ss/w:rd%?#&é "  # every character a URL treats specially, and a trailing space


def secret_file(folder: Path, name: str, text: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return name


def test_the_passwords_come_from_their_files_into_the_urls(tmp_path: Path) -> None:
    for name in ("mariadb-password", "mongo-password", "redis-password"):
        secret_file(tmp_path, name, PASSWORD + "\n")  # the newline an editor or `echo` leaves
    path = write(tmp_path, config(
        store={"directory": "mysql://vim@mariadb:3306/vim", "directory-password-file": "mariadb-password",
               "messages": "mongodb://vim@mongo:27017/vim?authSource=admin",
               "messages-password-file": "mongo-password"},
        redis={"url": "redis://redis:6379/0", "password-file": "redis-password"}))
    loaded = load_config(path)
    mysql = connect_params(loaded.store.directory)
    assert (mysql["user"], mysql["password"], mysql["host"], mysql["database"]) == (
        "vim", PASSWORD.encode(), "mariadb", "vim")
    mongo = uri_parser.parse_uri(loaded.store.messages)
    assert (mongo["username"], mongo["password"], mongo["database"]) == ("vim", PASSWORD, "vim")
    assert mongo["options"]["authSource"] == "admin"
    redis = urlsplit(loaded.redis.url)
    assert (redis.username, unquote(redis.password or ""), redis.hostname, redis.path) == ("", PASSWORD, "redis", "/0")
    for url in (loaded.store.directory, loaded.store.messages, loaded.redis.url):
        assert "p%40ss" in url and PASSWORD not in redact(url) and "p%40ss" not in redact(url)


def test_a_sentinel_url_takes_the_servers_password_from_a_file(tmp_path: Path) -> None:
    from vim_cluster.redis_url import parse_sentinel_url

    secret_file(tmp_path, "redis-password", PASSWORD)
    path = write(tmp_path, config(redis={"url": "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/vim/2",
                                         "password-file": "redis-password"}))
    parsed = parse_sentinel_url(load_config(path).redis.url)
    assert (parsed.password, parsed.service, parsed.db, len(parsed.sentinels)) == (PASSWORD, "vim", 2, 2)


@pytest.mark.parametrize(
    ("section", "values", "key", "says"),
    [
        ("store", {"directory-password-file": "pw"}, "vim.store.directory-password-file", "network URL"),  # sqlite
        ("redis", {"url": "embedded", "password-file": "pw"}, "vim.redis.password-file", "network URL"),
        ("store", {"directory": "mysql://vim:inline@db:3306/vim", "directory-password-file": "pw"},
         "vim.store.directory-password-file", "holds a password already"),
        ("store", {"messages": "mongodb://mongo:27017/vim", "messages-password-file": "pw"},
         "vim.store.messages-password-file", "must name the user"),
        ("store", {"directory": "mysql://vim@db:3306/vim", "directory-password-file": "missing"},
         "vim.store.directory-password-file", "cannot read"),
        ("store", {"directory": "mysql://vim@db:3306/vim", "directory-password-file": "empty"},
         "vim.store.directory-password-file", "is empty"),
    ],
)
def test_a_password_file_that_cannot_serve_names_its_key(tmp_path: Path, section: str, values: dict[str, str],
                                                          key: str, says: str) -> None:
    secret_file(tmp_path, "pw", PASSWORD)
    secret_file(tmp_path, "empty", "\n")
    error = config_error(write(tmp_path, config(**{section: values})))
    assert error.key == key and says in error.problem, error
    assert PASSWORD not in str(error)
