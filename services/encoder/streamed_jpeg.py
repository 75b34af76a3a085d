"""One image's jpeg, encoded strip by strip while its rows are still arriving.

An HW or HWC tensor arrives row after row, so each strip of rows can go to
the encode executor as soon as its last byte lands; by the time the final
chunk arrives most of the image is already encoded, on every core. The strips
are stitched into one file (see `jpeg.py`). Layouts whose rows do not arrive
whole (CHW, batches) take the ordinary path: receive everything, then encode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ferry.services.encoder.images import EncodedImage, encoded_jpeg, jpeg_settings
from ferry.services.encoder.jpeg import encode_strip, mcu_size, stitch_strips, strip_rows
from ferry.services.encoder.tensors import ArrivingTensor, channels_first, to_image_pixels

Run = Callable[[Callable[[int, int], bytes], int, int], Awaitable[bytes]]


class StreamedJpeg:
    def __init__(
        self, arriving: ArrivingTensor, *, value_range: int, quality: int | None, run: Run, parts: int
    ) -> None:
        self.arriving = arriving
        self.height, self.width = arriving.shape[:2]
        channels = arriving.shape[2] if len(arriving.shape) == 3 else 1
        self.value_range = value_range
        self.quality, self.subsampling = jpeg_settings(quality)
        self.mcu = mcu_size(channels, self.subsampling)
        self.rows_per_strip = strip_rows(self.height, self.width, self.mcu, parts)
        self._run = run
        self._next_row = 0
        self._strips: list[asyncio.Future[bytes]] = []

    @classmethod
    def plan(
        cls,
        arriving: ArrivingTensor,
        *,
        channel_order: int,
        value_range: int,
        quality: int | None,
        run: Run,
        parts: int,
    ) -> StreamedJpeg | None:
        """A streamed encode when the tensor is one image whose rows arrive whole (HW, HWC); None for the ordinary path.

        The header has been checked already (spec.py): this only picks the path.
        """
        shape = arriving.shape
        if len(shape) == 2 or (len(shape) == 3 and not channels_first((1, *shape), channel_order)):
            return cls(arriving, value_range=value_range, quality=quality, run=run, parts=parts)
        return None

    def rows_arrived(self) -> None:
        """Start encoding every strip whose rows have all arrived (call after each chunk)."""
        ready = self.arriving.rows_received
        while self._next_row < self.height:
            stop = min(self._next_row + self.rows_per_strip, self.height)
            if stop > ready:
                return
            strip = asyncio.ensure_future(self._run(self._encode_rows, self._next_row, stop))
            # `finish` raises the first failure; the others are read here so none is reported as lost.
            strip.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._strips.append(strip)
            self._next_row = stop

    def _encode_rows(self, start: int, stop: int) -> bytes:
        pixels = to_image_pixels(self.arriving.rows(start, stop), self.value_range, keep_16_bit=False)
        return encode_strip(pixels if pixels.ndim == 3 else pixels[:, :, None], self.quality, self.subsampling)

    async def finish(self) -> EncodedImage:
        """The whole jpeg; call once every byte has arrived (`ArrivingTensor.tensor()` checks that)."""
        self.rows_arrived()
        try:
            strips = await asyncio.gather(*self._strips)
        except BaseException:
            self.cancel()
            raise
        data = stitch_strips(list(strips), self.height, self.width, self.rows_per_strip, self.mcu)
        return encoded_jpeg(data, self.width, self.height)

    def cancel(self) -> None:
        """Drop strips not yet started; ones already encoding finish on their thread and are discarded."""
        for strip in self._strips:
            strip.cancel()
