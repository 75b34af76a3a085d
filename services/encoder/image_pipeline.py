"""Images encoded once their tensor is in; one HW or HWC jpeg is encoded in strips while its rows arrive.

The tensor lands in one buffer sized from the header (`ArrivingTensor`), so
nothing is regrown or copied when it is complete; see streamed_jpeg.py for
which jpegs start early, and why.
"""

from __future__ import annotations

from ferry.errors import InvalidArgument
from ferry.services.encoder.images import EncodedImage, encode_images
from ferry.services.encoder.pipeline import Run
from ferry.services.encoder.request import AudioChunk, Chunk
from ferry.services.encoder.spec import EncodeSpec, ImageSpec
from ferry.services.encoder.streamed_jpeg import StreamedJpeg
from ferry.services.encoder.tensors import ArrivingTensor


class ImagePipeline:
    def __init__(self, spec: EncodeSpec, image: ImageSpec, run: Run, *, max_pixels: int, encode_threads: int) -> None:
        self._spec = spec
        self._image = image
        self._run = run
        self._max_pixels = max_pixels
        self._arriving = ArrivingTensor(spec.tensor.dtype, spec.tensor.shape)
        self._streamed = None
        if image.format == "jpeg" and not image.options.animate:
            self._streamed = StreamedJpeg.plan(
                self._arriving,
                channel_order=spec.channel_order,
                value_range=image.value_range,
                quality=image.options.quality,
                run=run,
                # Two strips per encode thread: the first starts early, and the one still to encode when
                # the last byte lands is short (1, 2, 4 and 8 strips measured on 2 threads: 4 was best).
                parts=2 * encode_threads,
            )

    async def feed(self, chunk: Chunk) -> None:
        if isinstance(chunk, AudioChunk):
            raise InvalidArgument("only tensor chunks may follow the header", reason="UNEXPECTED_MESSAGE")
        self._arriving.add(chunk.data)
        if self._streamed is not None:
            self._streamed.rows_arrived()

    async def finish(self) -> list[EncodedImage]:
        tensor = self._arriving.tensor()  # refuses a tensor still short of bytes
        if self._streamed is not None:
            return [await self._streamed.finish()]
        image = self._image
        return await self._run(
            lambda: encode_images(
                tensor, image.format, image.options, channel_order=self._spec.channel_order, max_pixels=self._max_pixels
            )
        )

    async def abort(self) -> None:
        if self._streamed is not None:
            self._streamed.cancel()  # strips not started yet; one encoding finishes on its thread, unused
