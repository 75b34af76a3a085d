"""Media out: tensors a handler leaves in `Image` / `Video` / `Audio` / `File` output fields become stored files.

A handler may build its media itself (`Image.from_tensor(...)`), or return the
raw tensor in the field and let the runner encode it through the
EncoderService:

    class Output(BaseModel):
        image: Image                                      # png by default
        preview: Annotated[Image, Encode("jpeg", quality=80)]
        audio: Annotated[Audio, Encode(sample_rate=24_000)]
        clips: list[Annotated[Video, Encode(fps=24)]]     # a list of frame tensors

    return {"image": tensor, "preview": tensor, "audio": samples, "clips": [frames]}

(a dict, or `Output.model_construct(...)`: pydantic itself would refuse a
tensor where an `Image` belongs). Options are `Client.encode_tensor`'s
keywords; they are fixed per field, so a value that depends on the input
(an fps the caller chose) is for `Video.from_tensor` in the handler.

An `Encode` marker says the runner encodes that field, so what it needs is
checked when the app loads (`check_encode_markers`, called by `describe`): a
format the encoder knows, only `encode_tensor`'s options, and `fps` for mp4 /
`sample_rate` for wav. A media field without a marker may be filled by the
handler itself (`Video.from_tensor(clip, fps=input.fps)`), so only a tensor
actually left there can show it lacks one — at request time.

A tensor the encoder refuses (wrong shape for an image, NaN) is the app's bug,
not the caller's: the request fails INTERNAL naming the field and the
encoder's reason. The encoder being down stays UNAVAILABLE.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

import grpc
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from ferry.errors import FerryError, Internal
from ferry.inference.services import Upstream
from ferry.toolkit import File
from ferry.uploads import FORMATS, EncodeOptions

__all__ = ["Encode", "OutputEncodingFailed", "check_encode_markers", "encode_outputs", "is_tensor"]

# What each media type is encoded as when its field says nothing else.
_DEFAULT_FORMATS = {"image": "png", "video": "mp4", "audio": "wav"}
# Per format, the option without which a tensor cannot be encoded at all.
_REQUIRED_OPTIONS = {"mp4": "fps", "wav": "sample_rate"}
# What an Encode marker may say besides its format: the SDK's encode options.
_OPTIONS = frozenset(EncodeOptions.__annotations__)


class Encode:
    """`Annotated[Image, Encode("jpeg", quality=85)]`: how the runner encodes a tensor left in this field."""

    def __init__(self, format: str | None = None, **options: Any) -> None:
        self.format = format
        self.options = options

    def __repr__(self) -> str:
        arguments = [repr(self.format)] if self.format else []
        arguments += [f"{key}={value!r}" for key, value in self.options.items()]
        return f"Encode({', '.join(arguments)})"


class OutputEncodingFailed(Internal):
    """A tensor in an output field could not be encoded: the app's bug, so INTERNAL; the message names the field."""

    reason = "BAD_OUTPUT_TENSOR"


def is_tensor(value: Any) -> bool:
    """A numpy array or a torch tensor (CPU or CUDA), told apart without importing torch."""
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, (str, bytes))


async def encode_outputs(
    client: Upstream,
    output_model: type[BaseModel],
    result: Any,
    expires_in: int | None,
    output_key: str | None = None,
) -> Any:
    """`result` with each tensor in a media field replaced by its stored file; anything else is left as it is.

    With `output_key`, each field's files are stored under ids derived from it and the field's name, so encoding
    the same request's outputs again (a run after its replica died) replaces them instead of adding more.
    """
    storing = _Storing(client, expires_in, output_key)
    if isinstance(result, BaseModel):
        values = {name: getattr(result, name) for name in type(result).model_fields if hasattr(result, name)}
    elif isinstance(result, dict):
        values = dict(result)
    else:
        return result
    replaced = False
    for name, field in output_model.model_fields.items():
        key = name if name in values else field.alias
        if key not in values:
            continue
        value = values[key]
        target = _field_target(field)
        if target is None:
            continue
        encoded = await _encode_value(storing, name, value, target)
        if encoded is not value:
            values[key], replaced = encoded, True
    return values if replaced else result


# (toolkit type, its Encode or None, whether the field is a list)
_Target = tuple[type[File], "Encode | None", bool]


@dataclass(frozen=True)
class _Storing:
    """Where and how one result's tensors are stored."""

    client: Upstream
    expires_in: int | None
    output_key: str | None

    def key_of(self, name: str) -> str:
        """The output key of field `name` ("clips[2]" for a list's item); "" for fresh object ids."""
        return f"{self.output_key}/{name}" if self.output_key else ""


def check_encode_markers(model: type[BaseModel], where: str) -> None:
    """Refuse an output field whose `Encode` the runner could never carry out.

    The ValueError names `where` and the field.
    """
    for name, field in model.model_fields.items():
        target = _field_target(field)
        if target is not None and target[1] is not None and (problem := _marker_problem(target[0], target[1])):
            raise ValueError(f"{where}: output field {name!r}: {problem}")


def _marker_problem(file_type: type[File], marker: Encode) -> str | None:
    format = marker.format or _DEFAULT_FORMATS.get(file_type.media_kind or "")
    if format is None:
        return f"a plain {file_type.__name__} has no default format: name one, as in Encode('png')"
    if format.lower() not in FORMATS:
        return f"{marker!r}: unknown format {format!r}; choose from {', '.join(FORMATS)}"
    if unknown := sorted(set(marker.options) - _OPTIONS):
        return f"{marker!r}: no option {', '.join(unknown)}; Encode takes {', '.join(sorted(_OPTIONS))}"
    required = _REQUIRED_OPTIONS.get(format.lower())
    value = marker.options.get(required) if required else None
    if required and not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
        return (
            f"{marker!r} encodes {format}, which needs {required} > 0: "
            f"annotate it Annotated[{file_type.__name__}, Encode({required}=...)]"
        )
    return None


def _field_target(field: FieldInfo) -> _Target | None:
    target = _media_target(field.annotation)
    if target is None:
        return None
    # pydantic moves a top-level Annotated's extras into the field's metadata.
    if (marker := next((m for m in field.metadata if isinstance(m, Encode)), None)) is not None:
        return (target[0], marker, target[2])
    return target


def _media_target(annotation: Any, in_list: bool = False) -> _Target | None:
    """Which toolkit type (and Encode marker) a field holds.

    `Image`, `Annotated[Audio, Encode(...)]`, lists, Optional.
    """
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *extras = get_args(annotation)
        found = _media_target(inner, in_list)
        marker = next((extra for extra in extras if isinstance(extra, Encode)), None)
        return (found[0], marker or found[1], found[2]) if found else None
    if origin in (Union, types.UnionType):
        members = [member for member in get_args(annotation) if member is not type(None)]
        return _media_target(members[0], in_list) if len(members) == 1 else None
    if origin in (list, Sequence, tuple) and not in_list:
        members = [member for member in get_args(annotation) if member is not Ellipsis]
        return _media_target(members[0], True) if len(members) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, File):
        return annotation, None, in_list
    return None


async def _encode_value(storing: _Storing, name: str, value: Any, target: _Target) -> Any:
    file_type, marker, is_list = target
    if not is_list:
        if not is_tensor(value):
            return value
        files = await _encode(storing, name, value, file_type, marker)
        if len(files) != 1:
            raise OutputEncodingFailed(
                f"output field {name!r} holds one {file_type.__name__} but its tensor encoded to {len(files)} files"
            )
        return files[0]
    if is_tensor(value):  # one batch tensor for a list field: a file per item
        return await _encode(storing, name, value, file_type, marker)
    if isinstance(value, (list, tuple)) and any(is_tensor(item) for item in value):
        items: list[Any] = []
        for index, item in enumerate(value):
            if is_tensor(item):
                items.extend(await _encode(storing, f"{name}[{index}]", item, file_type, marker))
            else:
                items.append(item)
        return items
    return value


async def _encode(
    storing: _Storing, name: str, tensor: Any, file_type: type[File], marker: Encode | None
) -> list[File]:
    format = (marker.format if marker else None) or _DEFAULT_FORMATS.get(file_type.media_kind or "")
    options = dict(marker.options) if marker else {}
    if format is None:
        raise OutputEncodingFailed(
            f"output field {name!r} is a plain File: say how to encode its tensor with Annotated[File, Encode('png')]"
        )
    required = _REQUIRED_OPTIONS.get(format)
    if required and not options.get(required):
        raise OutputEncodingFailed(
            f"output field {name!r} holds a tensor but no {required}: "
            f"annotate it Annotated[{file_type.__name__}, Encode({required}=...)]"
        )
    options.setdefault("expires_in", storing.expires_in)
    options["output_key"] = storing.key_of(name)
    try:
        files = await storing.client.encode_tensor(tensor, format, **options)
        return [file_type.from_proto(file) for file in files]
    except (ValueError, TypeError) as error:  # the SDK refused the tensor or an option before sending
        raise OutputEncodingFailed(f"output field {name!r}: {error}") from None
    except FerryError as error:
        if error.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
            raise OutputEncodingFailed(
                f"output field {name!r}: {error.message}", reason=error.reason or "BAD_OUTPUT_TENSOR"
            ) from None
        raise
