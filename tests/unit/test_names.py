"""Display and group names (core/names.py): what passes, in which form, and what is refused
because it could pass for another name or garble the text around it on others' screens."""

from __future__ import annotations

import unicodedata

import pytest

from vim_cluster.core.names import MAX_MARKS, RULE, valid_new
from vim_cluster.errors import ErrorKind
from vim_cluster.protocol import frames as f
from vim_cluster.protocol.codec import FrameError, decode

from .test_codec import as_binary, as_text

KEPT = [
    ("Alice", "Alice"),
    ("  Alice Smith\u3000", "Alice Smith"),  # white space at the ends, an ideographic space too
    ("Ame\u0301lie", "Amélie"),  # NFC: e + combining acute is é
    ("Nguyễn Văn An", "Nguyễn Văn An"),
    ("علی\u200cرضا", "علی\u200cرضا"),  # Persian: the zero-width non-joiner is part of the spelling
    ("👨\u200d👩\u200d👧 family", "👨\u200d👩\u200d👧 family"),  # emoji joined with ZWJ
    ("❤\ufe0f <b>bold</b> & 'quotes'", "❤\ufe0f <b>bold</b> & 'quotes'"),  # markup is only text
    ("שלום world", "שלום world"),  # right-to-left letters themselves are fine
    ("x" * 64, "x" * 64),
    ("Ewan \U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",  # the Scottish flag: tags
     "Ewan \U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"),
    ("\u1832\u1820\u1828\u180e\u1820", "\u1832\u1820\u1828\u180e\u1820"),  # Mongolian Tana: vowel separator
]

REFUSED = [
    "",
    "   ",
    "x" * 65,
    "admin\u202egnp.exe",  # RIGHT-TO-LEFT OVERRIDE: shows as "adminexe.png"
    "\u202ab", "\u202bb", "\u202cb", "\u202db",
    "a\u2066b", "a\u2067b", "a\u2068b", "a\u2069b",  # isolates
    "a\u200eb", "a\u200fb", "a\u061cb",  # direction marks
    "ali\u200bce",  # zero-width space: looks like "alice"
    "\ufeffalice", "ali\u00adce",  # BOM, soft hyphen
    "alice\U000e0041",  # a tag character (invisible)
    "\U0001f3f4\U000e0067\U000e0062", "\U0001f3f4\U000e007f",  # a flag's tags without their end, or none
    "line\nbreak", "tab\there", "esc\x1b[31mred", "del\x7f", "c1\x85x",
    "a\u2028b", "a\u2029b",  # line and paragraph separators
    "a\ud800b",  # a lone surrogate
    "\u3164", "a\u3164b", "\u115f\u1160", "\uffa0",  # Hangul fillers: show as nothing
    "Z" + "\u0336" * (MAX_MARKS + 1),  # Zalgo: marks in a row that spill over the lines around
]


@pytest.mark.parametrize(("given", "stored"), KEPT)
def test_a_name_is_stored_in_nfc_without_surrounding_white_space(given: str, stored: str) -> None:
    assert valid_new(given) == stored
    assert unicodedata.is_normalized("NFC", stored)


@pytest.mark.parametrize("name", REFUSED, ids=[repr(n[:12]) for n in REFUSED])
def test_a_name_that_could_pass_for_another_or_garble_the_screen_is_refused(name: str) -> None:
    assert valid_new(name) is None


def test_marks_in_a_row_up_to_the_limit_pass() -> None:
    assert valid_new("Z" + "\u0336" * MAX_MARKS) is not None
    assert valid_new(("e" + "\u0301\u0302") * 20) is not None  # a few on each letter, many in all


@pytest.mark.parametrize("code", ["register", "group-create"])
@pytest.mark.parametrize("wire", [as_text, as_binary])
def test_register_and_group_create_refuse_such_names_as_invalid(code: str, wire) -> None:
    base = ({"username": "mallory", "password": "12345678"} if code == "register" else {"members": ["2"]})
    with pytest.raises(FrameError) as caught:
        decode(wire(code, {**base, "name": "admin\u202egnp.exe", "rid": "r"}), max_content=1024)
    assert caught.value.kind is ErrorKind.INVALID and caught.value.rid == "r"
    assert caught.value.detail == f"{code}.name: {RULE}"
    command = decode(wire(code, {**base, "name": " Ame\u0301lie "}), max_content=1024)
    assert isinstance(command, f.Register | f.GroupCreate) and command.name == "Amélie"


@pytest.mark.parametrize("code", ["register", "group-create"])
def test_the_length_limit_applies_to_the_name_after_nfc_and_trimming(code: str) -> None:
    """A Korean name of 28 syllables sent decomposed (NFD, as text copied from a macOS file
    name comes: 75 code points) and 64 letters with a space either side were refused by the
    frame's length check before the name rule's NFC and trimming; both are 28 and 64
    characters as stored."""
    base = ({"username": "mallory", "password": "12345678"} if code == "register" else {"members": ["2"]})
    hangul = "김민준박서연최지훈" * 3 + "한"  # each syllable three jamo in NFD
    for sent, stored in ((unicodedata.normalize("NFD", hangul), hangul), (" " + "x" * 64 + " ", "x" * 64)):
        assert len(sent) > 64
        command = decode(as_text(code, {**base, "name": sent}), max_content=1024)
        assert isinstance(command, f.Register | f.GroupCreate) and command.name == stored
    with pytest.raises(FrameError) as caught:
        decode(as_text(code, {**base, "name": "x" * 65}), max_content=1024)
    assert caught.value.detail == f"{code}.name: {RULE}"
