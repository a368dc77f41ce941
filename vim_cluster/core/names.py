"""Display names (a user's `name`) and group names: what a new one may be.

Others see these names in their contact lists, conversation heads and message bubbles, so a
name must not be able to pass for someone else's or garble what is around it. Rules (the same
for `register`'s `name`, `group-create`'s `name` and `vim-cluster user add --name`):
- The name is normalised to Unicode NFC and stripped of white space at both ends; that form is
  stored and shown. It must then be 1 to 64 characters.
- Refused: control characters (category Cc: newline, tab, escape, DEL, C1), format characters
  (Cf: the bidi embeddings, overrides and isolates U+202A-U+202E and U+2066-U+2069, the marks
  U+200E, U+200F, U+061C, zero-width space, BOM, soft hyphen, tag characters) except those
  spellings need (SPELLING: U+200D in emoji sequences, U+200C in Persian and Indic spellings,
  U+180E in Mongolian ones) and the tags of an emoji flag (England, Scotland, Wales: U+1F3F4,
  tags, U+E007F), surrogates (Cs),
  line and paragraph separators (Zl, Zp), the blank Hangul fillers (a name that shows as
  nothing), and more than MAX_MARKS combining marks (Mn, Me) in a row (text that spills over
  the lines around it).
- Names stored before these rules are shown as stored: the web client leaves the refused
  characters out when it shows a name, `vim-cluster user list` writes control characters as
  escapes.
"""

from __future__ import annotations

import re
import unicodedata

MAX_LENGTH = 64
MAX_MARKS = 4  # combining marks in a row (Vietnamese, Indic and Tibetan spellings need fewer)
SPELLING = frozenset("\u200c\u200d\u180e")  # ZWNJ, ZWJ, MONGOLIAN VOWEL SEPARATOR (in the name Tana)
FLAG_TAGS = re.compile("(?<=\U0001f3f4)[\U000e0020-\U000e007e]+\U000e007f")  # an emoji tag sequence's tags
FILLERS = frozenset("\u115f\u1160\u3164\uffa0")  # Hangul fillers: letters that show as nothing
REFUSED = frozenset(("Cc", "Cs", "Zl", "Zp"))
RULE = (f"must be 1 to {MAX_LENGTH} characters (after Unicode NFC and trimming white space) without control, "
        f"format (bidi), separator or surrogate characters, nor more than {MAX_MARKS} combining marks in a row")


def valid_new(name: str) -> str | None:
    """The name to store (NFC, trimmed) if it is acceptable for a new user or group, else None."""
    normal = unicodedata.normalize("NFC", name).strip()
    if not 1 <= len(normal) <= MAX_LENGTH:
        return None
    marks = 0
    for char in FLAG_TAGS.sub("", normal):
        category = unicodedata.category(char)
        if category in REFUSED or (category == "Cf" and char not in SPELLING) or char in FILLERS:
            return None
        marks = marks + 1 if category in ("Mn", "Me") else 0
        if marks > MAX_MARKS:
            return None
    return normal
