"""Media in: the runner downloads an input's URL fields through the DownloaderService before the handler runs.

Which fields: `schema.media_input_fields` (`*_url`, `*_urls` and fields hinted
`ui={"field": "file"|"image"|"audio"|"video"}`) holding http(s) URLs or data
URIs. All of a request's URLs download at once; the first failure cancels the
rest and fails the request with the downloader's own status (a URL the network
guard refuses stays PERMISSION_DENIED). The handler then finds each file through
`context.input_files[field]`, or by calling `ferry.download_file(url)` as it
would anywhere: the SDK answers that from the runner's copy.

Each file lands in a fresh per-download folder; `discard` removes them when
the request is over, so inputs do not pile up on the machine.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from pydantic import BaseModel

from ferry.inference.schema import media_input_fields
from ferry.inference.services import Upstream

# Field name → its file, or its files in order for a list field.
InputFiles = dict[str, Path | list[Path]]


def input_urls(model: BaseModel) -> dict[str, str | list[str]]:
    """The URL-holding media fields that are set, by field name (unset optional fields are left out)."""
    urls: dict[str, str | list[str]] = {}
    for name in media_input_fields(type(model)):
        value = getattr(model, name)
        if isinstance(value, str) and value:
            urls[name] = value
        elif isinstance(value, (list, tuple)) and value:
            urls[name] = [str(item) for item in value]
    return urls


async def download_inputs(client: Upstream, model: BaseModel) -> tuple[InputFiles, dict[str, Path]]:
    """Download every media URL of `model` concurrently: (files by field, path by URL)."""
    urls = input_urls(model)
    unique = list(
        dict.fromkeys(url for value in urls.values() for url in ([value] if isinstance(value, str) else value))
    )
    tasks = [asyncio.create_task(client.download_file(url)) for url in unique]
    try:
        paths = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        discard([path for path in done if isinstance(path, Path)])
        raise
    by_url = dict(zip(unique, paths, strict=True))
    files: InputFiles = {
        name: by_url[value] if isinstance(value, str) else [by_url[url] for url in value]
        for name, value in urls.items()
    }
    return files, by_url


def discard(paths: list[Path]) -> None:
    """Remove downloaded inputs with the per-download folders they were given."""
    for path in paths:
        shutil.rmtree(path.parent, ignore_errors=True)
