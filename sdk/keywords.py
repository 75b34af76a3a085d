"""Keyword groups (`**options: Unpack[SomeOptions]`) checked at run time as named parameters are.

A type checker sees the TypedDict; a caller without one still gets Python's own
TypeError for a misspelt keyword, instead of the keyword being ignored.
"""

from __future__ import annotations

from collections.abc import Mapping


def check_keywords(caller: str, options: Mapping[str, object], allowed: type) -> None:
    known = allowed.__required_keys__ | allowed.__optional_keys__  # type: ignore[attr-defined]
    for name in options:
        if name not in known:
            raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}")
