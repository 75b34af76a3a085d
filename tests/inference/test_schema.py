"""Endpoint schemas: self-contained JSON a playground renders (form hints on inputs, previews on
outputs), and the input fields the runner downloads and output fields that hold media."""

from collections.abc import Iterator
from typing import Any, Optional

import pytest
from pydantic import BaseModel, Field

from ferry.inference.schema import input_schema, media_input_fields, media_kind, media_output_fields, output_schema, ui
from ferry.toolkit import Audio, CompressedFile, File, Image, Video


def refs_in(node: Any) -> Iterator[str]:
    """Every $ref anywhere in a JSON document."""
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for value in node.values():
            yield from refs_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs_in(item)


class Crop(BaseModel):
    left: int = 0
    top: int = 0


class Region(BaseModel):
    """A region to repaint."""

    crop: Crop
    mask_image_url: str


class EditInput(BaseModel):
    prompt: str
    image_url: str
    regions: list[Region] = []
    main: Region | None = None


class Node(BaseModel):
    name: str
    children: list["Node"] = []


class TreeInput(BaseModel):
    root: Node
    crop: Crop


class GalleryOutput(BaseModel):
    cover: Image
    images: list[Image]
    clip: Video | None = None
    soundtrack: Audio | None = None
    archive: CompressedFile
    report: File
    caption: str


def property_hint(schema: dict, name: str) -> dict | None:
    return schema["properties"][name].get("ui")


# -- self-contained ------------------------------------------------------------------------


def test_nested_models_are_inlined_so_no_ref_remains() -> None:
    for schema in (input_schema(EditInput), output_schema(GalleryOutput)):
        assert list(refs_in(schema)) == []
        assert "$defs" not in schema

    schema = input_schema(EditInput)
    region = schema["properties"]["regions"]["items"]
    assert region["title"] == "Region" and region["description"] == "A region to repaint."
    assert region["properties"]["crop"]["properties"]["left"] == {"default": 0, "title": "Left", "type": "integer"}
    assert schema["properties"]["main"]["anyOf"][0]["title"] == "Region"


def test_inlined_copies_are_independent() -> None:
    schema = input_schema(EditInput)
    schema["properties"]["regions"]["items"]["properties"]["crop"]["title"] = "changed"

    assert schema["properties"]["main"]["anyOf"][0]["properties"]["crop"]["title"] == "Crop"


def test_a_recursive_model_alone_keeps_its_definition() -> None:
    schema = input_schema(TreeInput)

    assert set(schema["$defs"]) == {"Node"}
    assert schema["properties"]["root"] == {"$ref": "#/$defs/Node"}
    assert schema["$defs"]["Node"]["properties"]["children"]["items"] == {"$ref": "#/$defs/Node"}
    assert "$ref" not in schema["properties"]["crop"]  # the rest is still inlined


def test_a_recursive_top_level_model_is_opened_at_the_top() -> None:
    schema = input_schema(Node)

    assert schema["title"] == "Node"
    assert set(schema["properties"]) == {"name", "children"}
    assert set(refs_in(schema)) == {"#/$defs/Node"}


def test_only_pydantic_models_have_schemas() -> None:
    with pytest.raises(TypeError, match="pydantic BaseModel subclass"):
        input_schema(dict)  # type: ignore[arg-type]


# -- input hints -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("weights_url", {"field": "file"}),
        ("image_url", {"field": "image"}),
        ("mask_image_url", {"field": "image"}),
        ("audio_url", {"field": "audio"}),
        ("video_url", {"field": "video"}),
        ("reference_video_url", {"field": "video"}),
        ("document_urls", {"field": "file", "dataset": True}),
        ("image_urls", {"field": "image", "dataset": True}),
        ("style_image_urls", {"field": "image", "dataset": True}),
        ("video_urls", {"field": "video", "dataset": True}),
        ("audio_urls", {"field": "file", "dataset": True}),
        ("prompt", None),
        ("url", None),
        ("image", None),
    ],
)
def test_input_fields_are_hinted_by_name(name: str, hint: dict | None) -> None:
    annotation = list[str] if name.endswith("_urls") else str
    model = type("Input", (BaseModel,), {"__annotations__": {name: annotation}})

    assert property_hint(input_schema(model), name) == hint


def test_an_authors_hint_wins_whole() -> None:
    class Input(BaseModel):
        photo: str = Field(json_schema_extra={"ui": {"field": "image"}})
        image_url: str = Field(json_schema_extra=ui("textarea"))
        clips: list[str] = Field(json_schema_extra=ui("video", dataset=True))

    schema = input_schema(Input)

    assert property_hint(schema, "photo") == {"field": "image"}
    assert property_hint(schema, "image_url") == {"field": "textarea"}
    assert property_hint(schema, "clips") == {"dataset": True, "field": "video"}


def test_ui_builds_the_json_schema_extra_of_an_explicit_hint() -> None:
    assert ui("image") == {"ui": {"field": "image"}}
    assert ui("file", dataset=True) == {"ui": {"field": "file", "dataset": True}}


def test_nested_models_are_hinted_too() -> None:
    schema = input_schema(EditInput)

    assert property_hint(schema, "image_url") == {"field": "image"}
    assert schema["properties"]["regions"]["items"]["properties"]["mask_image_url"]["ui"] == {"field": "image"}


def test_a_hint_lands_on_the_property_named_by_the_alias() -> None:
    class Input(BaseModel):
        image_url: str = Field(alias="imageUrl")

    assert property_hint(input_schema(Input), "imageUrl") == {"field": "image"}


def test_input_schemas_carry_no_previews() -> None:
    class Input(BaseModel):
        seed_image: Image

    assert property_hint(input_schema(Input), "seed_image") is None


# -- output previews ----------------------------------------------------------------------------


def test_output_fields_holding_files_are_marked_for_preview() -> None:
    schema = output_schema(GalleryOutput)

    assert property_hint(schema, "cover") == {"preview": "image"}
    assert property_hint(schema, "images") == {"preview": "image"}
    assert property_hint(schema, "clip") == {"preview": "video"}
    assert property_hint(schema, "soundtrack") == {"preview": "audio"}
    assert property_hint(schema, "archive") == {"preview": "file"}
    assert property_hint(schema, "report") == {"preview": "file"}
    assert property_hint(schema, "caption") is None


def test_output_schemas_describe_files_as_they_travel() -> None:
    cover = output_schema(GalleryOutput)["properties"]["cover"]

    assert cover["required"] == ["url"]
    assert {"url", "content_type", "file_name", "file_size", "width", "height"} <= set(cover["properties"]), (
        "flat, as the reference"
    )


def test_output_schemas_carry_no_input_hints() -> None:
    class Output(BaseModel):
        image_url: str

    assert property_hint(output_schema(Output), "image_url") is None


def test_an_authors_output_hint_wins() -> None:
    class Output(BaseModel):
        poster: Image = Field(json_schema_extra={"ui": {"preview": "file"}})

    assert property_hint(output_schema(Output), "poster") == {"preview": "file"}


@pytest.mark.parametrize(
    ("annotation", "kind"),
    [
        (Image, "image"),
        (list[Image], "image"),
        (tuple[Audio, ...], "audio"),
        (Optional[Video], "video"),  # noqa: UP045 (the old spelling is the case under test)
        (list[Video] | None, "video"),
        (Image | Video, "file"),
        (File, "file"),
        (CompressedFile, "file"),
        (str, None),
        (Image | str, None),
        (list[str], None),
    ],
)
def test_media_kind_of_a_type(annotation: Any, kind: str | None) -> None:
    assert media_kind(annotation) == kind


# -- media fields for the runner ------------------------------------------------------------------


def test_media_input_fields_are_the_url_fields_the_runner_downloads() -> None:
    class Input(BaseModel):
        prompt: str
        image_url: str
        reference_urls: list[str] = []
        audio_url: str | None = None
        photo: str = Field(json_schema_extra=ui("image"))
        not_downloaded_url: str = Field(json_schema_extra=ui("text"))
        count_url: int = 0
        regions: list[Region] = []

    assert media_input_fields(Input) == ["image_url", "reference_urls", "audio_url", "photo"]


def test_media_output_fields_name_each_media_field_and_its_kind() -> None:
    assert media_output_fields(GalleryOutput) == {
        "cover": "image",
        "images": "image",
        "clip": "video",
        "soundtrack": "audio",
        "archive": "file",
        "report": "file",
    }
