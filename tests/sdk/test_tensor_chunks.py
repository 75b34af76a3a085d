"""How the SDK cuts a tensor into Encode messages: whole frames (or rows) per message wherever one fits."""

from __future__ import annotations

import numpy as np

from ferry.tensors import tensor_payload


def test_video_chunks_carry_whole_frames_evenly_and_rejoin_to_the_tensor() -> None:
    frames = np.arange(10 * 40 * 50 * 3, dtype=np.uint32).astype(np.uint8).reshape(10, 40, 50, 3)
    frame_bytes = 40 * 50 * 3
    chunks = tensor_payload(frames).chunks(4 * frame_bytes + 17)  # room for 4 frames, not for 4 and a half
    assert [len(c) for c in chunks] == [4 * frame_bytes, 4 * frame_bytes, 2 * frame_bytes]
    assert b"".join(chunks) == frames.tobytes()


def test_a_1024_row_image_goes_in_four_messages_of_256_rows_not_three_and_a_sliver() -> None:
    image = np.zeros((1024, 1024, 3), dtype=np.uint8)
    assert [len(c) for c in tensor_payload(image).chunks(1 << 20)] == [256 * 1024 * 3] * 4


def test_a_first_dimension_larger_than_a_message_is_cut_at_the_message_size() -> None:
    rows = np.zeros((3, 1000), dtype=np.uint8)
    assert [len(c) for c in tensor_payload(rows).chunks(300)] == [300, 300, 300, 300, 300, 300, 300, 300, 300, 300]


def test_empty_and_zero_dimensional_tensors_give_no_or_one_chunk() -> None:
    assert tensor_payload(np.zeros((0, 4), np.uint8)).chunks(8) == []
    assert [bytes(c) for c in tensor_payload(np.array(7, np.uint8)).chunks(8)] == [b"\x07"]
