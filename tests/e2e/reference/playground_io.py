"""playground-schema-conventions.md: the File and Image input and output examples, as written.

Only the imports differ. (`output_path` is the examples' own placeholder: the handler writes the
file it names. The page's MyApp classes are one per example; here they are MyFileApp and MyImageApp.)
"""

from typing import List

from PIL import Image as PILImage
from pydantic import BaseModel, Field

import ferry.inference as fal  # was: import fal
from ferry.toolkit import File, Image, download_file  # was: from fal.toolkit import File, Image, download_file


class MyInput(BaseModel):
    file_url: str


class MyOutput(BaseModel):
    file: File


class MyFileApp(fal.App):
    @fal.endpoint("/")
    def predict(self, input: MyInput) -> MyOutput:
        input_path = download_file(input.file_url)
        output_path = f"{input_path}.reversed"
        with open(input_path, "rb") as source, open(output_path, "wb") as target:
            target.write(source.read()[::-1])
        return MyOutput(file=File.from_path(output_path))


class MyImageInput(BaseModel):
    image_url: str


class MyImageOutput(BaseModel):
    image: Image


class MyImageApp(fal.App):
    @fal.endpoint("/")
    def predict(self, input: MyImageInput) -> MyImageOutput:
        input_path = download_file(input.image_url)
        output_path = f"{input_path}.flipped.png"
        PILImage.open(input_path).transpose(PILImage.Transpose.FLIP_LEFT_RIGHT).save(output_path)
        return MyImageOutput(image=Image.from_path(output_path))


# The page's hints, for the schema test (no app needed).
class ExplicitHints(BaseModel):
    foo: str = Field(..., ui={"field": "image"})


class Datasets(BaseModel):
    image_urls: List[str]
    audio_urls: List[str]
    video_urls: List[str]
