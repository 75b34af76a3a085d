"""An app whose handler logs every way an author does, for the log tests (tests/e2e/test_logs_stack.py).

Its input's media field is downloaded by the runner; `page` it downloads itself
with a header; it stores an image and, carelessly, logs the stored file's URL
(presigned, on S3) through `context.log`, and the same through plain `logging`.
"""

from __future__ import annotations

import logging

import numpy as np
from pydantic import BaseModel

import ferry
from ferry.inference import App, RequestContext, endpoint
from ferry.toolkit import Image

log = logging.getLogger("log_app")


class Paint(BaseModel):
    image_url: str
    page: str
    page_authorization: str


class Painted(BaseModel):
    image: Image


class LogApp(App):
    app_id = "logs"

    @endpoint("/")
    def paint(self, input: Paint, context: RequestContext) -> Painted:
        ferry.download_file(input.page, request_headers={"Authorization": input.page_authorization})
        image = Image.from_tensor(np.zeros((8, 12, 3), np.uint8), format="png")
        context.log(f"handler stored {image.url}")
        log.info("plain logging stored %s", image.url)
        return Painted(image=image)
