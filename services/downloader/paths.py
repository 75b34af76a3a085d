"""Where downloads may land and what may be read back: everything stays inside the data roots.

Relative target dirs resolve under the data dir (the reference toolkit resolves
under /data); absolute ones must already lie inside a root. Symlinks are
resolved before the check, so a link cannot smuggle a path out. Ferry's own
bookkeeping (records, locks) under `.ferry/` is off limits to callers, except
the stores it manages (model weights, and the URL cache of files callers place
themselves), and so is `files/`, the local storage the
CDN serves (a download there could overwrite a published file).
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

from ferry.errors import NotFound, PermissionDenied

INTERNAL_DIR = ".ferry"
STORED_FILES_DIR = "files"  # the local storage the CDN serves: written only by the encoder


class DataRoots:
    def __init__(self, data_dir: Path, temp_dir: Path | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.temp_dir = (temp_dir or self.data_dir / "tmp").resolve()
        self.internal = self.data_dir / INTERNAL_DIR
        self.stored_files = self.data_dir / STORED_FILES_DIR
        self.model_weights = self.internal / "model_weights"
        self.url_cache = self.internal / "cache"
        self.roots = (self.data_dir, self.temp_dir)
        for folder in (self.data_dir, self.temp_dir, self.internal, self.model_weights, self.url_cache):
            folder.mkdir(parents=True, exist_ok=True)

    def _inside_roots(self, path: Path, shown: str) -> Path:
        resolved = path.resolve()
        if not any(resolved.is_relative_to(root) for root in self.roots):
            raise PermissionDenied(f"{shown!r} is outside the data roots", reason="PATH_OUTSIDE_ROOTS")
        managed = resolved.is_relative_to(self.model_weights) or resolved.is_relative_to(self.url_cache)
        if resolved.is_relative_to(self.internal) and not managed:
            raise PermissionDenied(f"{shown!r} is ferry's own bookkeeping", reason="PATH_OUTSIDE_ROOTS")
        if resolved.is_relative_to(self.stored_files):
            raise PermissionDenied(
                f"{shown!r} is the CDN's storage, written only by the encoder", reason="PATH_OUTSIDE_ROOTS"
            )
        return resolved

    def target_dir(self, requested: str) -> Path:
        """The folder a download lands in; "" means a fresh per-request folder."""
        if "\x00" in requested:
            raise PermissionDenied("target_dir contains NUL", reason="PATH_OUTSIDE_ROOTS")
        if not requested:
            folder = self.temp_dir / uuid.uuid4().hex
        else:
            given = Path(requested)
            folder = self._inside_roots(given if given.is_absolute() else self.data_dir / given, requested)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def model_weights_dir(self, url: str) -> Path:
        return _url_folder(self.model_weights, url)

    def url_cache_dir(self, url: str) -> Path:
        """Where a file the caller places itself is cached: one folder per URL."""
        return _url_folder(self.url_cache, url)

    def readable_file(self, requested: str) -> Path:
        """A file under the roots that `Read` may stream."""
        if not requested or "\x00" in requested:
            raise PermissionDenied("path must name a file under the data roots", reason="PATH_OUTSIDE_ROOTS")
        given = Path(requested)
        path = self._inside_roots(given if given.is_absolute() else self.data_dir / given, requested)
        if not path.is_file():
            raise NotFound(f"no file at {requested!r}", reason="FILE_NOT_FOUND")
        return path


def _url_folder(store: Path, url: str) -> Path:
    folder = store / hashlib.sha256(url.encode()).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    return folder
