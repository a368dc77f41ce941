"""The data-lifecycle keys of `vim.message` (docs/data-lifecycle.md): defaults keep everything,
bad values are one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vim_cluster.config import load_config

from .test_config import config, config_error, write


def test_defaults_keep_everything_and_purge_at_two_in_batches_of_50(tmp_path: Path) -> None:
    message = load_config(write(tmp_path, config())).message
    assert (message.retention_days, message.offline_retention_days) == (None, None)
    assert (message.purge_hour, message.purge_batch) == (2, 50)


def test_retention_keys_are_read(tmp_path: Path) -> None:
    keys = {"retention-days": 365, "offline-retention-days": 30, "purge-hour": 0, "purge-batch": 500}
    message = load_config(write(tmp_path, config(message=keys))).message
    assert (message.retention_days, message.offline_retention_days, message.purge_hour, message.purge_batch) == (
        365, 30, 0, 500)


@pytest.mark.parametrize(
    ("key", "value"),
    [("retention-days", 0), ("retention-days", "1y"), ("retention-days", 1.5), ("retention-days", True),
     ("offline-retention-days", -1), ("purge-hour", 24), ("purge-hour", "02"), ("purge-batch", 5),
     ("purge-batch", 1_000_000)],
)
def test_bad_lifecycle_values_name_their_key(tmp_path: Path, key: str, value: Any) -> None:
    error = config_error(write(tmp_path, config(message={key: value})))
    assert error.key == f"vim.message.{key}"
    assert "\n" not in str(error) and repr(value) in error.problem


def test_offline_messages_cannot_outlive_the_messages(tmp_path: Path) -> None:
    error = config_error(write(tmp_path, config(message={"retention-days": 7, "offline-retention-days": 30})))
    assert error.key == "vim.message.offline-retention-days"
    assert "retention-days (7)" in error.problem
