"""`data:` URIs: small payloads inline in a request instead of behind a URL.

The downloader decodes these locally (capped at 10 MiB by default), so they
suit thumbnails, masks and short clips, not model weights. Pillow is imported
only by the functions that encode images.
"""

from __future__ import annotations

import base64
import io
import mimetypes
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

FALLBACK_CONTENT_TYPE = "application/octet-stream"

# JPEG has no alpha or palette; Pillow refuses those modes rather than flatten them.
_JPEG_MODES = ("RGB", "L", "CMYK")


def encode(data: bytes, content_type: str) -> str:
    """`data:<content_type>;base64,<data>`."""
    if "," in content_type:  # the first comma ends the header: one inside it would corrupt the payload
        raise ValueError(f"a data URI content type cannot contain ',': {content_type!r}")
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def encode_file(path: str | os.PathLike[str], content_type: str | None = None) -> str:
    """A file's bytes as a data URI; the content type is guessed from its name unless given."""
    if content_type is None:
        content_type = mimetypes.guess_type(os.fspath(path))[0] or FALLBACK_CONTENT_TYPE
    with open(path, "rb") as file:
        return encode(file.read(), content_type)


def encode_image(image: PILImage, format: str = "jpeg", quality: int | None = None) -> str:
    """A Pillow image encoded as `format` (jpeg, png, webp, …) in a data URI."""
    options = {} if quality is None else {"quality": quality}
    return encode(*image_bytes(image, format, **options))


def image_bytes(image: PILImage, format: str, **save_options: Any) -> tuple[bytes, str]:
    """Encode a Pillow image as `format` (a file extension or Pillow format name); returns (bytes, content type).

    Images JPEG cannot hold (alpha, palette, 16-bit) are converted to RGB first,
    since asking for a JPEG means accepting its limits.
    """
    from PIL import Image

    pillow_format = Image.registered_extensions().get(f".{format.lower()}", format.upper())
    if pillow_format not in Image.SAVE:
        raise ValueError(f"Pillow cannot write {format!r} images")
    if pillow_format == "JPEG" and image.mode not in _JPEG_MODES:
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=pillow_format, **save_options)
    content_type = (
        Image.MIME.get(pillow_format) or mimetypes.guess_type(f"x.{format.lower()}")[0] or FALLBACK_CONTENT_TYPE
    )
    return buffer.getvalue(), content_type
