"""A download's file name comes from the server or the URL, but never leaves the target folder."""

import hashlib

import pytest

from ferry.services.downloader.names import choose_file_name, content_disposition_name, hashed_name, url_file_name

URL = "https://h/a/b/file.bin"


# -- choose_file_name: the server's name, else the URL's, else a hash ----------------------


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ('attachment; filename="../../x"', "x"),
        ('attachment; filename="..\\\\..\\\\evil.txt"', "evil.txt"),  # escaped backslashes, as RFC 6266 sends them
        ('attachment; filename="..\\..\\evil.txt"', "evil.txt"),  # bare backslashes, as Windows paths arrive
        ('attachment; filename="C:\\Users\\me\\report.pdf"', "report.pdf"),
        ("attachment; filename=/etc/passwd", "passwd"),
        ('attachment; filename="  spaced.txt  "', "spaced.txt"),
    ],
)
def test_server_name_is_reduced_to_its_basename(header, name):
    assert choose_file_name(URL, header) == name


@pytest.mark.parametrize(
    "header",
    [
        None,
        "attachment",
        'attachment; filename="..hidden"',
        'attachment; filename=".."',
        'attachment; filename="a\x00b.txt"',
        'attachment; filename="a\x1bb.txt"',
        "attachment; filename*=UTF-8''a%00b.txt",
        'attachment; filename=""',
        'attachment; filename="dir/"',
    ],
)
def test_an_untrustworthy_server_name_falls_back_to_the_url(header):
    assert choose_file_name(URL, header) == "file.bin"


def test_url_name_ignores_query_and_fragment():
    assert choose_file_name("https://h/a/b/model.safetensors?token=abc#frag", None) == "model.safetensors"


@pytest.mark.parametrize("url", ["https://h/", "https://h", "https://h/dir/", "https://h/a/..", "https://h/a%00b"])
def test_without_any_usable_name_the_url_is_hashed(url):
    assert choose_file_name(url, None) == hashed_name(url)


def test_an_encoded_slash_cannot_smuggle_a_folder_into_the_name():
    # The decoded segment "a/b" is reduced like any other path: to its basename.
    assert url_file_name("https://h/a%2Fb") == "a/b"
    assert choose_file_name("https://h/a%2Fb", None) == "b"
    assert choose_file_name("https://h/..%2F..%2Fetc%2Fpasswd", None) == "passwd"
    assert choose_file_name("https://h/a%2F", None) == hashed_name("https://h/a%2F")


# -- content_disposition_name ------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ('attachment; filename="report.pdf"', "report.pdf"),
        ("attachment; filename=report.pdf", "report.pdf"),
        ("inline;filename = report.pdf ; size=3", "report.pdf"),
        ('ATTACHMENT; FileName="report.pdf"', "report.pdf"),
        ('attachment; filename="say \\"hi\\".txt"', 'say "hi".txt'),
        ('attachment; filename="a;b.txt"', "a;b.txt"),
        ('attachment; note="filename=evil.txt"; filename="good.txt"', "good.txt"),
        ('attachment; filename="../../x"', "../../x"),  # raw: sanitising is safe_file_name's job
    ],
)
def test_plain_filename_quoted_or_token(header, name):
    assert content_disposition_name(header) == name


@pytest.mark.parametrize(
    "header",
    [
        "attachment; filename=\"plain.txt\"; filename*=UTF-8''%E2%82%AC%20rates.txt",
        "attachment; filename*=utf-8''%E2%82%AC%20rates.txt; filename=\"plain.txt\"",
        "attachment; FILENAME*=UTF-8'en'%E2%82%AC%20rates.txt",
    ],
)
def test_extended_filename_wins_and_is_percent_decoded(header):
    assert content_disposition_name(header) == "€ rates.txt"


def test_extended_filename_in_iso_8859_1():
    assert content_disposition_name("attachment; filename*=iso-8859-1'en'%A3%20rates.txt") == "£ rates.txt"


@pytest.mark.parametrize(
    "extended",
    [
        "UTF-8''%E2%82",  # not UTF-8
        "koi8-r''%E2%82%AC",  # a charset RFC 5987 does not require
        "%E2%82%AC.txt",  # no charset at all
    ],
)
def test_an_undecodable_extended_filename_falls_back_to_the_plain_one(extended):
    assert content_disposition_name(f'attachment; filename="plain.txt"; filename*={extended}') == "plain.txt"


def test_no_filename_parameter_is_none():
    assert content_disposition_name(None) is None
    assert content_disposition_name("inline") is None
    assert content_disposition_name('attachment; name="field"') is None


# -- url_file_name -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://h/a/b/model.safetensors?token=abc", "model.safetensors"),
        ("https://h/my%20file%E2%82%AC.txt", "my file€.txt"),
        ("https://h/a+b.txt", "a+b.txt"),  # "+" is a space only in query strings
        ("https://h/", None),
        ("https://h", None),
        ("https://h/dir/", None),
        ("https://h/?name=x.txt", None),
    ],
)
def test_url_name_is_the_last_path_segment_percent_decoded(url, name):
    assert url_file_name(url) == name


# -- hashed_name ---------------------------------------------------------------------------


def test_hashed_name_is_the_first_32_hex_digits_of_sha256_plus_the_extension():
    assert hashed_name("key", ".png") == hashlib.sha256(b"key").hexdigest()[:32] + ".png"
    assert hashed_name("key") == hashlib.sha256(b"key").hexdigest()[:32]
