"""A request's input JSON read into its endpoint's model, or refused INVALID_ARGUMENT saying exactly why.

Refused, each naming what is wrong: text that is not JSON, JSON nested deeper
than `MAX_INPUT_DEPTH` (the parser would otherwise recurse until Python gives
up), fields the model does not have (a misspelled `promt` would silently be
dropped and the default used — the nearest field name is suggested), and
fields whose values the model refuses. A model whose config sets `extra`
("allow" or "ignore") explicitly takes fields it does not name, as its author
asked.
"""

from __future__ import annotations

import difflib
import json
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import AliasChoices, AliasPath, BaseModel, ValidationError
from pydantic.fields import FieldInfo

from ferry.errors import InvalidArgument

__all__ = ["MAX_INPUT_DEPTH", "parse_input"]

# Deeper than any form a person fills in; far below where recursion would fail.
MAX_INPUT_DEPTH = 64
_SHOWN_PROBLEMS = 10


def parse_input(model: type[BaseModel], input_json: str) -> BaseModel:
    """`input_json` as an instance of `model` ("" is the empty object)."""
    try:
        document = json.loads(input_json or "{}")
    except json.JSONDecodeError as error:
        raise InvalidArgument(f"input is not JSON: {error}", reason="INVALID_JSON") from None
    except RecursionError:  # deeper than the parser itself goes
        raise _too_deep() from None
    if _deeper_than(document, MAX_INPUT_DEPTH):
        raise _too_deep()
    problems = [f"{'.'.join(path) or '(input)'}: {message}" for path, message in _unknown_fields(model, document, ())]
    try:
        parsed = model.model_validate(document)
    except ValidationError as error:
        problems += [f"{'.'.join(str(p) for p in e['loc']) or '(input)'}: {e['msg']}" for e in error.errors()]
        parsed = None
    if problems:
        shown = problems[:_SHOWN_PROBLEMS] + (
            [f"and {len(problems) - _SHOWN_PROBLEMS} more"] if len(problems) > _SHOWN_PROBLEMS else []
        )
        raise InvalidArgument("invalid input: " + "; ".join(shown), reason="INVALID_INPUT")
    assert parsed is not None
    return parsed


def _too_deep() -> InvalidArgument:
    return InvalidArgument(f"input nests deeper than {MAX_INPUT_DEPTH} levels", reason="INPUT_TOO_DEEP")


def _deeper_than(document: Any, limit: int) -> bool:
    pending = [(document, 1)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                return True
            pending.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return False


def _unknown_fields(model: type[BaseModel], document: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], str]]:
    """(path, problem) for each key of `document` — and of the nested models' objects — its model does not take."""
    if not isinstance(document, dict) or "extra" in model.model_config:
        return []
    keys = {key: (name, field) for name, field in model.model_fields.items() for key in _input_keys(name, field)}
    found = []
    for key, value in document.items():
        where = (*path, str(key)[:100])
        if key not in keys:
            close = difflib.get_close_matches(str(key), list(keys), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            found.append((where, f"unknown field{hint}"))
            continue
        for nested, item in _nested_models(keys[key][1].annotation, value):
            found += _unknown_fields(nested, item, where)
    return found


def _input_keys(name: str, field: FieldInfo) -> list[str]:
    alias = field.validation_alias
    choices = alias.choices if isinstance(alias, AliasChoices) else [alias] if alias is not None else []
    keys = [choice for choice in choices if isinstance(choice, str)]
    keys += [str(choice.path[0]) for choice in choices if isinstance(choice, AliasPath) and choice.path]
    return keys + [key for key in (field.alias, name) if key is not None]


def _nested_models(annotation: Any, value: Any) -> list[tuple[type[BaseModel], Any]]:
    """The (model, object) pairs a field's value holds: a model, or a list or Optional of one."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _nested_models(get_args(annotation)[0], value)
    if origin in (Union, types.UnionType):
        models = [
            member for member in get_args(annotation) if isinstance(member, type) and issubclass(member, BaseModel)
        ]
        return [(models[0], value)] if len(models) == 1 and isinstance(value, dict) else []
    if origin in (list, tuple, set, frozenset) and isinstance(value, list):
        members = [member for member in get_args(annotation) if member is not Ellipsis]
        return [pair for item in value for pair in _nested_models(members[0], item)] if len(members) == 1 else []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(value, dict):
        return [(annotation, value)]
    return []
