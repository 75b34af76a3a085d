"""A file name is safe to create inside a folder: its basename only, no control characters, never a parent reference."""

import pytest

from ferry.file_names import MAX_NAME_BYTES, is_safe_file_name, safe_file_name


@pytest.mark.parametrize(
    "candidate",
    [None, "", "   ", ".", "..", "..hidden", "a/..", "dir/", "dir\\", "x\x00y", "x\ty", "x\x1fy", "x\x7fy", "a\ud800"],
)
def test_untrustworthy_names_are_refused(candidate):
    assert safe_file_name(candidate) is None


@pytest.mark.parametrize(
    ("candidate", "name"),
    [
        ("report.pdf", "report.pdf"),
        (" report.pdf ", "report.pdf"),
        ("a/b\\c.txt", "c.txt"),
        (".env", ".env"),
        ("a..b", "a..b"),
        ("\u00e9t\u00e9.wav", "\u00e9t\u00e9.wav"),
    ],
)
def test_trustworthy_names_keep_only_their_basename(candidate, name):
    assert safe_file_name(candidate) == name


def test_a_name_of_exactly_max_bytes_is_kept():
    name = "a" * (MAX_NAME_BYTES - 4) + ".bin"
    assert safe_file_name(name) == name


def test_a_long_name_is_cut_to_max_bytes_keeping_its_extension_and_whole_characters():
    name = safe_file_name("\u00e9" * 200 + ".safetensors")
    assert name is not None and name.endswith(".safetensors")
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert name == "\u00e9" * ((MAX_NAME_BYTES - len(".safetensors")) // 2) + ".safetensors"


def test_an_extension_too_long_to_keep_is_cut_with_the_rest():
    name = safe_file_name("a." + "x" * 300)
    assert name == ("a." + "x" * 300)[:MAX_NAME_BYTES]


# -- is_safe_file_name: what is stored verbatim ---------------------------------------------


@pytest.mark.parametrize("name", ["report.pdf", ".env", "a..b", "\u00e9t\u00e9.wav", "a" * MAX_NAME_BYTES])
def test_a_name_safe_as_it_stands_is_safe(name):
    assert is_safe_file_name(name)


@pytest.mark.parametrize(
    "name", ["", " report.pdf", "a/b.txt", "a\\b.txt", "..", "..hidden", "x\ty", "a" * (MAX_NAME_BYTES + 1)]
)
def test_a_name_that_would_be_cut_or_changed_is_not(name):
    assert not is_safe_file_name(name)
