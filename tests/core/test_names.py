"""Task names (issue 5): validated, and never able to reach outside the library folder."""

from __future__ import annotations

import os
import re
import unicodedata

import pytest
from casam_testing import one_line, save_task
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from casam.errors import InputError, TaskExistsError
from casam.library import TaskLibrary
from casam.library.names import (
    FORBIDDEN,
    MAX_NAME,
    MAX_NAME_BYTES,
    RESERVED,
    WINDOWS_DEVICES,
    validate_name,
)


@pytest.mark.parametrize(
    "name",
    ["CT spleen", "MR-T2 prostate (2024)", "x", "Leber_CT.v2", "肝臓", "a" * MAX_NAME, "façade"],
)
def test_good_names_pass(name):
    assert validate_name(name) == unicodedata.normalize("NFC", name)


@pytest.mark.parametrize(
    "name, why",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("a/b", "'/'"),
        ("a\\b", "'\\\\'"),
        ("../x", "'/'"),
        ("..", "'..'"),
        (".", "'.'"),
        (".hidden", "'.'"),
        ("x.", "'.'"),
        ("a..b", "'..'"),
        ("tab\there", "\\t"),
        ("new\nline", "\\n"),
        ("nul\x00byte", "\\x00"),
        ("bidi\u202eevil", "\\u202e"),
        (" lead", "space"),
        ("trail ", "space"),
        ("sam", "reserved"),
        ("SAM", "reserved"),
        ("auto", "reserved"),
        ("none", "reserved"),
        ("CON", "device"),
        ("com1.ct", "device"),
        ("lpt9", "device"),
        ("a:b", "':'"),
        ("a*b", "'*'"),
        ("a" * (MAX_NAME + 1), "characters long"),
        ("😀" * 60, "too long"),
        ("C:\\Windows", "':'"),
    ],
)
def test_bad_names_refused_with_a_one_line_message(name, why):
    with pytest.raises(InputError) as e:
        validate_name(name)
    assert why in one_line(e.value)


@pytest.mark.parametrize("value", [None, 3, b"bytes", ["a"]])
def test_non_text_names_refused(value):
    with pytest.raises(InputError):
        validate_name(value)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.text(min_size=0, max_size=80))
@example(name="../../etc")
@example(name="..")
@example(name="/abs")
@example(name="a/../../b")
@example(name="~")
@example(name="\\..\\..")
@example(name="\u2024\u2024")  # ONE DOT LEADER x2 (NFKC would make '..'; NFC keeps it)
def test_any_text_is_refused_or_stays_inside_the_library(tmp_path, name):
    root = (tmp_path / "lib").resolve()
    try:
        n = validate_name(name)
    except InputError as e:
        one_line(e)
        return
    path = root / n
    assert path.resolve().parent == root
    assert path.name == n and os.sep not in n and (os.altsep is None or os.altsep not in n)
    assert not n.startswith(".")
    assert validate_name(n) == n  # idempotent


_NAME_CHAR = st.characters(
    categories=("L", "M", "N", "P", "S"), exclude_characters="".join(FORBIDDEN)
)
_NAME_END = st.characters(categories=("L", "N"))


@st.composite
def valid_names(draw) -> str:
    """Names validate_name accepts, built directly (filtering random text rejected most draws).

    At most 50 characters of at most 4 UTF-8 bytes each stays within MAX_NAME_BYTES; the ends are
    letters or digits; runs of dots collapse to one.
    """
    middle = draw(st.text(st.one_of(_NAME_CHAR, st.just(" ")), max_size=48))
    name = draw(_NAME_END) + re.sub(r"\.{2,}", ".", middle) + draw(_NAME_END)
    return name[: draw(st.integers(1, len(name)))].rstrip(" .") or name[0]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=valid_names())
def test_every_valid_name_can_be_a_folder_with_its_trash_and_tmp_names(tmp_path_factory, name):
    nfc = unicodedata.normalize("NFC", name)  # may expand a few code points; rare
    low = nfc.lower()
    assume(len(nfc.encode("utf-8")) <= MAX_NAME_BYTES and low not in RESERVED)
    assume(low.split(".")[0].strip() not in WINDOWS_DEVICES)
    n = validate_name(name)
    root = tmp_path_factory.mktemp("names")
    for folder in (n, f".trash-0123abcd-{n}", f".{n}.casamtask.4194304.tmp"):
        (root / folder).mkdir()  # never ENAMETOOLONG, never outside root
        assert (root / folder).resolve().parent == root.resolve()


def test_name_cannot_escape_through_library_api(tmp_path):
    lib = TaskLibrary(tmp_path / "lib")
    outside = tmp_path / "outside"
    for bad in ("../outside", "..", "/tmp/x", "a/b"):
        with pytest.raises(InputError):
            save_task(lib, bad)
        with pytest.raises(InputError):
            lib.remove(bad)
        with pytest.raises(InputError):
            lib.load(bad)
        assert bad not in lib
    assert not outside.exists()
    assert [p.name for p in (tmp_path / "lib").iterdir() if not p.name.startswith(".")] == [
        "casam-library.json"
    ]


def test_nfc_and_nfd_spellings_are_the_same_task(tmp_path):
    lib = TaskLibrary(tmp_path / "lib")
    nfc = unicodedata.normalize("NFC", "Gefäße")
    nfd = unicodedata.normalize("NFD", "Gefäße")
    assert nfc != nfd
    save_task(lib, nfd)
    assert lib.names() == [nfc]
    with pytest.raises(TaskExistsError):
        save_task(lib, nfc)
    assert lib.load(nfd).info.name == nfc
