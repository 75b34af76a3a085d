"""`VideoPipeline`: frames encoded while the rest arrives, one block at a time, and an abort that leaves no file.

In process, with real encodes on real worker threads; a gate holds a block back where the order of events
is the point (the look-ahead, the writer lock).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from ferry.errors import InvalidArgument
from ferry.services.encoder.choices import DataType, MediaFormat
from ferry.services.encoder.request import AudioChunk, EncodeHeader, TensorChunk, TensorHeader, VideoOptions
from ferry.services.encoder.spec import EncodeLimits, EncodeSpec, VideoSpec
from ferry.services.encoder.video import Mp4Writer
from ferry.services.encoder.video_pipeline import SharedMp4Writer, VideoPipeline

FRAMES = np.stack([np.roll(np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3), 3 * i, axis=1) for i in range(6)])
FRAME_BYTES = FRAMES[0].nbytes
LIMITS = EncodeLimits(max_bytes=1 << 30, max_pixels=1 << 20)
BOUND = 30  # seconds: only how long a broken pipeline may hang before the test fails, never a measurement


def video_spec(frames: np.ndarray = FRAMES) -> tuple[EncodeSpec, VideoSpec]:
    header = EncodeHeader(TensorHeader(DataType.UINT8, frames.shape), MediaFormat.MP4, options=VideoOptions(fps=10.0))
    spec = EncodeSpec.from_header(header, LIMITS)
    assert isinstance(spec.media, VideoSpec)
    return spec, spec.media


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(max_workers=2)
    yield executor
    executor.shutdown(wait=True)  # every block has run when the test looks at the folder


class Runner:
    """The engine's executor trip; with `gated`, each block of frames waits at `gate` before it runs."""

    def __init__(self, executor: ThreadPoolExecutor, *, gated: bool = False) -> None:
        self.executor = executor
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.blocks_waiting = threading.Semaphore(0)

    def __call__(self, function: Callable[..., Any], *args: object) -> asyncio.Future[Any]:
        def run() -> Any:
            if getattr(function, "__name__", "") == "write_block":
                self.blocks_waiting.release()
                assert self.gate.wait(BOUND), "the test never opened the gate"
            return function(*args)

        return asyncio.get_running_loop().run_in_executor(self.executor, run)


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


async def test_frames_split_anywhere_across_chunks_make_the_whole_video(executor, tmp_path: Path) -> None:
    spec, video = video_spec()
    pipeline = VideoPipeline(spec, video, tmp_path / "split.mp4", Runner(executor))
    data = FRAMES.tobytes()
    for offset in range(0, len(data), 10_007):  # no chunk ends where a frame does
        await pipeline.feed(TensorChunk(data[offset : offset + 10_007]))

    info = await pipeline.finish()

    assert (info.frame_count, info.width, info.height) == (6, 64, 48)
    assert decoded_frames(tmp_path / "split.mp4") == 6


async def test_the_next_block_is_received_while_the_one_before_still_encodes(executor, tmp_path: Path) -> None:
    spec, video = video_spec()
    runner = Runner(executor, gated=True)
    pipeline = VideoPipeline(spec, video, tmp_path / "overlap.mp4", runner)

    # Returns while its block cannot run: the stream is read on meanwhile.
    await asyncio.wait_for(pipeline.feed(TensorChunk(FRAMES[:3].tobytes())), BOUND)
    assert runner.blocks_waiting.acquire(timeout=BOUND)
    # One block in flight: the next waits for it rather than queueing frames without bound.
    second = asyncio.ensure_future(pipeline.feed(TensorChunk(FRAMES[3:].tobytes())))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not second.done()

    runner.gate.set()
    await asyncio.wait_for(second, BOUND)
    info = await pipeline.finish()

    assert info.frame_count == 6 and decoded_frames(tmp_path / "overlap.mp4") == 6


class WriterSpy:
    """Which Mp4Writers the pipeline opened, and which it aborted (x264 holds early frames back, so an open writer
    may have written no file yet: the file alone would not tell)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, before_open: Callable[[], None] = lambda: None) -> None:
        self.opened: list[Mp4Writer] = []
        self.aborted: list[Mp4Writer] = []
        real_open, real_abort = SharedMp4Writer._open, Mp4Writer.abort

        def spied_open(shared: SharedMp4Writer) -> Mp4Writer:
            before_open()
            writer = real_open(shared)
            self.opened.append(writer)
            return writer

        def spied_abort(writer: Mp4Writer) -> None:
            self.aborted.append(writer)
            real_abort(writer)

        monkeypatch.setattr(SharedMp4Writer, "_open", spied_open)
        monkeypatch.setattr(Mp4Writer, "abort", spied_abort)


async def test_a_block_that_starts_after_an_abort_opens_no_writer(
    executor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = WriterSpy(monkeypatch)
    spec, video = video_spec()
    runner = Runner(executor, gated=True)
    pipeline = VideoPipeline(spec, video, tmp_path / "aborted.mp4", runner)
    await pipeline.feed(TensorChunk(FRAMES[:2].tobytes()))
    assert runner.blocks_waiting.acquire(timeout=BOUND)  # on its thread, not started

    await pipeline.abort()
    runner.gate.set()  # the block runs now, after the abort
    executor.shutdown(wait=True)

    assert spy.opened == []
    assert list(tmp_path.iterdir()) == []


async def test_an_abort_waits_for_a_block_inside_the_writer_then_aborts_what_it_opened(
    executor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opening, may_open = threading.Event(), threading.Event()

    def slow_open() -> None:  # the first block, holding the writer lock, is still opening the file
        opening.set()
        assert may_open.wait(BOUND)

    spy = WriterSpy(monkeypatch, before_open=slow_open)
    spec, video = video_spec()
    pipeline = VideoPipeline(spec, video, tmp_path / "racing.mp4", Runner(executor))
    await pipeline.feed(TensorChunk(FRAMES[:2].tobytes()))
    assert await asyncio.to_thread(opening.wait, BOUND)

    aborting = asyncio.ensure_future(pipeline.abort())
    threading.Timer(0.2, may_open.set).start()  # the block finishes while the abort waits for the lock
    await asyncio.wait_for(aborting, BOUND)
    executor.shutdown(wait=True)

    assert len(spy.opened) == 1 and spy.aborted == spy.opened
    assert list(tmp_path.iterdir()) == []


async def test_bytes_beyond_the_shape_are_refused_as_they_arrive(executor, tmp_path: Path) -> None:
    spec, video = video_spec()
    pipeline = VideoPipeline(spec, video, tmp_path / "long.mp4", Runner(executor))
    await pipeline.feed(TensorChunk(FRAMES.tobytes()))

    with pytest.raises(InvalidArgument) as refused:
        await pipeline.feed(TensorChunk(bytes(FRAME_BYTES)))

    assert refused.value.reason == "TENSOR_SIZE_MISMATCH"
    await pipeline.abort()
    executor.shutdown(wait=True)
    assert list(tmp_path.iterdir()) == []


async def test_a_stream_that_ends_short_of_its_shape_is_refused_at_the_finish(executor, tmp_path: Path) -> None:
    spec, video = video_spec()
    pipeline = VideoPipeline(spec, video, tmp_path / "short.mp4", Runner(executor))
    await pipeline.feed(TensorChunk(FRAMES[:5].tobytes()))

    with pytest.raises(InvalidArgument) as refused:
        await pipeline.finish()

    assert refused.value.reason == "TENSOR_SIZE_MISMATCH"


async def test_audio_bytes_without_a_declared_track_are_refused(executor, tmp_path: Path) -> None:
    spec, video = video_spec()
    pipeline = VideoPipeline(spec, video, tmp_path / "silent.mp4", Runner(executor))

    with pytest.raises(InvalidArgument) as refused:
        await pipeline.feed(AudioChunk(b"\0" * 4))

    assert refused.value.reason == "UNEXPECTED_MESSAGE"
