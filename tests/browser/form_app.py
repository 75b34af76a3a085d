"""An app whose input has every kind of field the playground renders; it echoes what it received."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from ferry.inference import App, RequestContext, endpoint
from ferry.inference.schema import ui


class Crop(BaseModel):
    left: int = Field(default=0, ge=0, le=100, description="Pixels cut from the left.")
    keep_aspect: bool = True


class FormInput(BaseModel):
    """Every kind of field, echoed back."""

    title: str = Field(description="Any text.")
    quality: Literal["draft", "final"] = "draft"
    strength: float = Field(default=0.25, ge=0.0, le=1.0)
    count: int = 3
    loud: bool = False
    tags: list[str] = ["first"]
    crop: Crop = Crop()
    reference_image_url: str | None = None
    voice: str | None = Field(default=None, json_schema_extra=ui("audio"))
    image_urls: list[str] = []


class FormOutput(BaseModel):
    received: dict[str, Any]


class FormApp(App):
    app_id = "forms"
    machine_type = "CPU"

    @endpoint("/")
    def echo(self, input: FormInput, context: RequestContext) -> FormOutput:
        """Echoes every field back, with a log line and a partial output on the way."""
        context.log(f"received {len(input.image_urls)} images")
        context.partial({"received": {"title": input.title}})
        return FormOutput(received=input.model_dump())
