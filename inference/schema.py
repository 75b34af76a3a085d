"""Endpoint JSON schemas a playground can render, and the media fields the runner handles.

`input_schema` / `output_schema` are pydantic's `model_json_schema()` made
self-contained — every `$ref` replaced by the definition it names — plus a
`"ui"` hint on properties:

- inputs, by field name: `*_url` is a file picker (`{"field": "file"}`), with
  `image_url`, `audio_url`, `video_url` (alone or as a suffix: `mask_image_url`)
  picking that kind; `*_urls` is a list of files (`{"field": "file", "dataset":
  true}`), with `image_urls` / `video_urls` picking images or videos;
- outputs, by type: a field holding `ferry.toolkit.File` or a subclass (also in
  a list or Optional) previews as `{"preview": "image"|"video"|"audio"|"file"}`.

Hints apply to the properties of nested models too. An author's own hint
always wins, whole: `Field(json_schema_extra={"ui": {"field": "image"}})`, or
with the helper, `Field(json_schema_extra=ui("image"))` — the way to say
`ui={"field": ...}` on a field.

A recursive model cannot be inlined: its definition stays under `$defs` (and
only such definitions do), referenced by `$ref`; the top level is always opened,
so the document's own properties are always at its top.
"""

from __future__ import annotations

import collections.abc
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import AliasChoices, AliasPath, BaseModel
from pydantic.fields import FieldInfo
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode
from pydantic_core import core_schema

from ferry.toolkit import File

__all__ = [
    "MEDIA_FIELD_KINDS",
    "input_schema",
    "media_input_fields",
    "media_kind",
    "media_output_fields",
    "output_schema",
    "ui",
]

# The `ui.field` values that mean "a URL the runner downloads".
MEDIA_FIELD_KINDS = ("file", "image", "audio", "video")
_REF_PREFIX = "#/$defs/"
_SEQUENCES = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Set)


def ui(field: str, **extra: Any) -> dict[str, Any]:
    """An explicit playground hint, for `Field(json_schema_extra=ui("image", dataset=True))`."""
    return {"ui": {"field": field, **extra}}


def input_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The self-contained JSON schema of an endpoint's input, with form hints."""
    return _self_contained(_require_model(model).model_json_schema(mode="validation", schema_generator=_InputSchema))


def output_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The self-contained JSON schema of an endpoint's output (as serialised), with preview hints."""
    return _self_contained(
        _require_model(model).model_json_schema(mode="serialization", schema_generator=_OutputSchema)
    )


def media_input_fields(model: type[BaseModel]) -> list[str]:
    """Top-level input fields the runner downloads: hinted as a file kind and holding URL strings.

    A field qualifies when its hint (the author's, else the name rule) has a
    `field` in `MEDIA_FIELD_KINDS` and its type is `str`, a list of `str`, or
    Optional of either. Python field names, not aliases.
    """
    return [
        name
        for name, field in _require_model(model).model_fields.items()
        if _input_hint(name, field).get("field") in MEDIA_FIELD_KINDS and _holds_strings(field.annotation)
    ]


def media_output_fields(model: type[BaseModel]) -> dict[str, str]:
    """Top-level output fields holding toolkit files, by name: "image", "video", "audio" or "file"."""
    return {
        name: kind
        for name, field in _require_model(model).model_fields.items()
        if (kind := media_kind(field.annotation))
    }


def media_kind(annotation: Any) -> str | None:
    """The preview kind of a type holding toolkit files (`Image`, `list[Video]`, `Audio | None`), else None.

    Mixed kinds (`Image | Video`) and plain `File` or `CompressedFile` are "file".
    """
    origin = get_origin(annotation)
    if origin is Annotated:
        return media_kind(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return _common_kind([member for member in get_args(annotation) if member is not type(None)])
    if origin in _SEQUENCES:
        return _common_kind([member for member in get_args(annotation) if member is not Ellipsis])
    if isinstance(annotation, type) and issubclass(annotation, File):
        return annotation.media_kind or "file"
    return None


# -- hints ------------------------------------------------------------------------------


def _name_hint(name: str) -> dict[str, Any]:
    for suffix, kinds, extra in (
        ("_urls", ("image", "video"), {"dataset": True}),
        ("_url", ("image", "audio", "video"), {}),
    ):
        if name.endswith(suffix):
            stem = name.removesuffix(suffix)
            kind = next((k for k in kinds if stem == k or stem.endswith("_" + k)), "file")
            return {"field": kind, **extra}
    return {}


def _input_hint(name: str, field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("ui"), dict):
        return extra["ui"]  # type: ignore[return-value]
    return _name_hint(name)


def _common_kind(members: list[Any]) -> str | None:
    kinds = {media_kind(member) for member in members}
    if not kinds or None in kinds:
        return None
    return kinds.pop() if len(kinds) == 1 else "file"


def _holds_strings(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _holds_strings(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        members = [member for member in get_args(annotation) if member is not type(None)]
        return bool(members) and all(_holds_strings(member) for member in members)
    if origin in _SEQUENCES:
        members = [member for member in get_args(annotation) if member is not Ellipsis]
        return bool(members) and all(member is str for member in members)
    return annotation is str


class _HintingSchema(GenerateJsonSchema):
    """Adds a `ui` hint to each model's properties as pydantic generates them, nested models included."""

    def hint(self, name: str, field: FieldInfo) -> dict[str, Any]:
        raise NotImplementedError

    def model_schema(self, schema: core_schema.ModelSchema) -> dict[str, Any]:
        json_schema = super().model_schema(schema)
        properties = json_schema.get("properties")
        if not isinstance(properties, dict):
            return json_schema
        for name, field in schema["cls"].model_fields.items():
            prop = properties.get(_property_name(name, field, self.mode))
            if isinstance(prop, dict) and "ui" not in prop and (hint := self.hint(name, field)):
                prop["ui"] = hint
        return json_schema


class _InputSchema(_HintingSchema):
    def hint(self, name: str, field: FieldInfo) -> dict[str, Any]:
        return _name_hint(name)


class _OutputSchema(_HintingSchema):
    def hint(self, name: str, field: FieldInfo) -> dict[str, Any]:
        kind = media_kind(field.annotation)
        return {"preview": kind} if kind else {}


def _property_name(name: str, field: FieldInfo, mode: JsonSchemaMode) -> str:
    # The key pydantic gives the property (it names properties by alias), mirroring its own rule.
    alias = field.validation_alias if mode == "validation" else field.serialization_alias
    choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
    for choice in choices:
        if isinstance(choice, str):
            return choice
        if isinstance(choice, AliasPath) and len(choice.path) == 1 and isinstance(choice.path[0], str):
            return choice.path[0]
    return field.alias or name


# -- self-contained ------------------------------------------------------------------------


def _self_contained(schema: dict[str, Any]) -> dict[str, Any]:
    definitions: dict[str, Any] = schema.pop("$defs", {})
    recursive = _recursive_definitions(definitions)

    def inline(node: Any) -> Any:
        if isinstance(node, list):
            return [inline(item) for item in node]
        if not isinstance(node, dict):
            return node
        name = _definition_name(node.get("$ref"))
        rest = {key: inline(value) for key, value in node.items()}
        if name in definitions and name not in recursive:
            del rest["$ref"]
            # Keys beside the $ref (a field's description, default, ui hint) refine the definition.
            return {**inline(definitions[name]), **rest}
        return rest

    document: dict[str, Any] = inline(schema)
    top = _definition_name(document.get("$ref"))
    if top in definitions:  # a recursive model at the top: open it once
        document = {**inline(definitions[top]), **{key: value for key, value in document.items() if key != "$ref"}}
    if recursive:
        document["$defs"] = {name: inline(definitions[name]) for name in sorted(recursive)}
    return document


def _definition_name(ref: Any) -> str | None:
    return ref.removeprefix(_REF_PREFIX) if isinstance(ref, str) and ref.startswith(_REF_PREFIX) else None


def _recursive_definitions(definitions: dict[str, Any]) -> set[str]:
    references = {name: _references(body) for name, body in definitions.items()}

    def reaches_itself(start: str) -> bool:
        seen: set[str] = set()
        pending = list(references[start])
        while pending:
            name = pending.pop()
            if name == start:
                return True
            if name not in seen and name in references:
                seen.add(name)
                pending.extend(references[name])
        return False

    return {name for name in definitions if reaches_itself(name)}


def _references(node: Any) -> set[str]:
    if isinstance(node, list):
        return set().union(*(_references(item) for item in node))
    if not isinstance(node, dict):
        return set()
    found = set().union(*(_references(value) for value in node.values()))
    name = _definition_name(node.get("$ref"))
    return found | {name} if name else found


def _require_model(model: Any) -> type[BaseModel]:
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model
    raise TypeError(f"expected a pydantic BaseModel subclass, got {model!r}")
