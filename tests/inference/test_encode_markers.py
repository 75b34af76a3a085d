"""An `Encode` marker the runner could never carry out is refused when the app loads, naming the field.

A field marked `Encode(...)` declares that the runner encodes a tensor left
there, so what the encode needs is known before any request: mp4 needs `fps`,
wav needs `sample_rate`, a plain `File` needs a format, and only
`encode_tensor`'s options exist. A media field without a marker may be filled
by the handler itself, so it loads as it is.
"""

from collections.abc import AsyncIterator
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, create_model

from ferry.inference import App, Encode, describe, endpoint
from ferry.toolkit import Audio, File, Image, Video


class Nothing(BaseModel):
    pass


def app_returning(output: type[BaseModel]) -> type[App]:
    # No `from __future__ import annotations` in this module: the annotation must be the class itself.
    class Studio(App):
        @endpoint("/render")
        def render(self, input: Nothing) -> output:  # type: ignore[valid-type]
            raise NotImplementedError

    return Studio


def refusal(output: type[BaseModel]) -> str:
    with pytest.raises(ValueError) as caught:  # noqa: PT011 (each caller reads the message)
        describe(app_returning(output))
    return str(caught.value)


def test_a_video_field_encoded_by_the_runner_without_fps_is_refused_naming_the_app_endpoint_and_field():
    class Clip(BaseModel):
        clip: Annotated[Video, Encode(crf=20)]

    message = refusal(Clip)
    assert "Studio.render (endpoint '/render')" in message
    assert "output field 'clip'" in message and "Encode(fps=...)" in message


def test_an_audio_field_encoded_as_wav_without_a_sample_rate_is_refused():
    class Sound(BaseModel):
        audio: Annotated[Audio, Encode("wav")]

    assert "output field 'audio'" in (message := refusal(Sound)) and "Encode(sample_rate=...)" in message


@pytest.mark.parametrize(
    "annotation",
    [list[Annotated[Video, Encode()]], Annotated[Video, Encode(fps=0)] | None, Annotated[Video, Encode(fps=-24)]],
    ids=["in a list", "zero, in an Optional", "negative"],
)
def test_fps_must_be_a_positive_number_wherever_the_video_field_is_nested(annotation: Any):
    Clips = create_model("Clips", clips=(annotation, ...))  # noqa: N806 (a class, made at run time)

    assert "output field 'clips'" in (message := refusal(Clips)) and "fps > 0" in message


def test_a_misspelled_option_is_refused_naming_it():
    class Clip(BaseModel):
        clip: Annotated[Video, Encode(fsp=24)]

    assert "no option fsp" in refusal(Clip)


def test_an_unknown_format_is_refused():
    class Sound(BaseModel):
        audio: Annotated[Audio, Encode("mp3", sample_rate=44_100)]

    assert "unknown format 'mp3'" in refusal(Sound)


def test_a_plain_file_marked_for_encoding_must_name_its_format():
    class Anything(BaseModel):
        file: Annotated[File, Encode()]

    assert "a plain File has no default format" in refusal(Anything)


def test_a_realtime_endpoints_outputs_are_checked_too():
    class Frame(BaseModel):
        clip: Annotated[Video, Encode(preset="fast")]

    class Live(App):
        @endpoint("/live", realtime=True)
        async def live(self, inputs: AsyncIterator[Nothing]) -> AsyncIterator[Frame]:
            yield Frame.model_construct()

    with pytest.raises(ValueError, match=r"Live\.live \(endpoint '/live'\): output field 'clip'"):
        describe(Live)


def test_complete_markers_and_unmarked_media_fields_load():
    class Everything(BaseModel):
        image: Image  # png by default: needs nothing
        preview: Annotated[Image, Encode("JPEG", quality=80)]
        clip: Annotated[Video, Encode(fps=8, crf=20)]
        clips: list[Annotated[Video, Encode(fps=24.5)]]
        sound: Annotated[Audio, Encode(sample_rate=8000)] | None = None
        made_by_the_handler: Video  # Video.from_tensor(frames, fps=input.fps): the runner encodes nothing here
        speech: Audio
        archive: Annotated[File, Encode("png")]

    spec = describe(app_returning(Everything))
    assert spec.endpoints["/render"].output_model is Everything
