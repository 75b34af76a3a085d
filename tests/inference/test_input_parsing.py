"""A request's input JSON into its endpoint's model: what is refused, and how the refusal names it."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field

from ferry.errors import InvalidArgument
from ferry.inference.input_parsing import MAX_INPUT_DEPTH, parse_input


class Style(BaseModel):
    name: str = "plain"


class Prompt(BaseModel):
    prompt: str
    steps: int = 8
    seed_value: int = Field(default=0, alias="seed")
    style: Style = Style()
    styles: list[Style] = []


class Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: str


def refusal(model: type[BaseModel], text: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        parse_input(model, text)
    return caught.value


def test_a_misspelled_field_is_refused_naming_it_and_the_field_meant():
    error = refusal(Prompt, '{"prompt": "a cat", "stpes": 20}')
    assert error.reason == "INVALID_INPUT"
    assert "stpes: unknown field (did you mean 'steps'?)" in error.message


def test_unknown_fields_of_nested_models_are_refused_with_their_path():
    error = refusal(Prompt, '{"prompt": "x", "style": {"nmae": "ink"}, "styles": [{"name": "a"}, {"colour": 1}]}')
    assert "style.nmae: unknown field (did you mean 'name'?)" in error.message
    assert "styles.colour: unknown field" in error.message


def test_unknown_fields_and_invalid_values_are_reported_together():
    error = refusal(Prompt, '{"promt": "a cat"}')
    assert (
        "promt: unknown field (did you mean 'prompt'?)" in error.message and "prompt: Field required" in error.message
    )


def test_aliases_and_field_names_are_both_known():
    assert parse_input(Prompt, '{"prompt": "x", "seed": 3}').seed_value == 3


def test_a_model_that_allows_extra_fields_takes_them():
    assert parse_input(Lenient, '{"prompt": "x", "lora": "ink"}').model_extra == {"lora": "ink"}


def test_json_nested_past_the_limit_is_refused_before_validation():
    deep = '{"prompt": "x", "style": ' + "[" * MAX_INPUT_DEPTH + "]" * MAX_INPUT_DEPTH + "}"
    assert refusal(Prompt, deep).reason == "INPUT_TOO_DEEP"


def test_json_nested_deeper_than_the_parser_recurses_is_refused_too():
    assert refusal(Prompt, "[" * 100_000 + "]" * 100_000).reason == "INPUT_TOO_DEEP"


def test_text_that_is_not_json_is_refused():
    assert refusal(Prompt, "{prompt: x}").reason == "INVALID_JSON"


def test_empty_input_is_the_empty_object():
    assert parse_input(Style, "") == Style()
