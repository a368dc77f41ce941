"""Usernames: what a new one may be, and the key under which two spellings are the same user.

Rules:
- A username is normalised with Unicode NFKC first (so full-width `ａｌｉｃｅ` and the Kelvin
  sign `K` become plain `alice` and `K`), then it must match the whole pattern
  `[A-Za-z0-9_.-]{3,32}` (fullmatch: no trailing newline, no space, nothing else).
- The stored username is that NFKC form (its case is kept for display); its key is the form
  casefolded. Two usernames with the same key are one user: `register` of the second is a
  `conflict`, and `login` with any spelling of the key finds the user.
- `login` does not check the pattern, it only computes the key: a user registered before these
  rules (whose key the migration computed as the lower-cased username) keeps logging in.
"""

from __future__ import annotations

import re
import unicodedata

PATTERN = r"[A-Za-z0-9_.-]{3,32}"
_PATTERN_RE = re.compile(PATTERN)


def normalise(username: str) -> str:
    """The NFKC form: what is stored and shown."""
    return unicodedata.normalize("NFKC", username)


def key(username: str) -> str:
    """The key that makes look-alike spellings one user (NFKC, then casefold)."""
    return normalise(username).casefold()


def valid_new(username: str) -> str | None:
    """The username to store (NFKC form) if it is acceptable for a new user, else None."""
    normal = normalise(username)
    return normal if _PATTERN_RE.fullmatch(normal) else None
