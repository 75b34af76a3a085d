"""The Upscaler as a LitServe LitAPI: JSON {"image_url", "scale"} in, the png as the response body.

    python litserve_server.py PORT

LitServe's defaults: one inference worker on the device, requests one at a time (no batching),
`decode_request` / `predict` / `encode_response` all in that worker, one API server process
in front. LitServe fetches nothing itself: `decode_request` downloads the URL.
"""

import sys
import tempfile
from pathlib import Path

import litserve as ls
from fastapi import Response
from upscale_model import fetch, upscale_png


class Upscaler(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="litserve-upscale-"))

    def decode_request(self, request: dict) -> tuple[Path, int]:
        with tempfile.NamedTemporaryFile(dir=self.work, delete=False) as target:
            pass
        return fetch(request["image_url"], Path(target.name)), int(request.get("scale", 2))

    def predict(self, x: tuple[Path, int]) -> bytes:
        source, scale = x
        try:
            return upscale_png(source, scale)
        finally:
            source.unlink()

    def encode_response(self, output: bytes) -> Response:
        return Response(content=output, media_type="image/png")


if __name__ == "__main__":
    server = ls.LitServer(Upscaler(), accelerator="cpu")
    server.run(port=int(sys.argv[1]), generate_client_file=False, log_level="warning")
