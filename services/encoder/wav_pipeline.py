"""A wav encoded once its tensor is in: a few fixed header fields and the samples (see audio.py)."""

from __future__ import annotations

from ferry.errors import InvalidArgument
from ferry.services.encoder.audio import AudioInfo, audio_samples, encode_wav
from ferry.services.encoder.pipeline import Run
from ferry.services.encoder.request import AudioChunk, Chunk
from ferry.services.encoder.spec import EncodeSpec, WavSpec
from ferry.services.encoder.tensors import ArrivingTensor


class WavPipeline:
    def __init__(self, spec: EncodeSpec, wav: WavSpec, run: Run) -> None:
        self._spec = spec
        self._wav = wav
        self._run = run
        self._arriving = ArrivingTensor(spec.tensor.dtype, spec.tensor.shape)

    async def feed(self, chunk: Chunk) -> None:
        if isinstance(chunk, AudioChunk):
            raise InvalidArgument("only tensor chunks may follow the header", reason="UNEXPECTED_MESSAGE")
        self._arriving.add(chunk.data)

    async def finish(self) -> tuple[bytes, AudioInfo]:
        """The wav file's bytes and what it holds."""
        tensor = self._arriving.tensor()  # refuses a tensor still short of bytes
        order, wav = self._spec.channel_order, self._wav
        return await self._run(lambda: encode_wav(audio_samples(tensor, order), wav.sample_rate, wav.sample_format))

    async def abort(self) -> None:
        pass  # nothing runs before `finish`, and nothing is written but the returned bytes
