"""The ordered sha256 of multipart parts: in order, out of order, re-sends, the holding cap, many threads at once."""

from __future__ import annotations

import hashlib
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ferry.services.storage.ordered_hash import READ_BLOCK, OrderedSha256


def sha256(*chunks: bytes) -> str:
    return hashlib.sha256(b"".join(chunks)).hexdigest()


def etag_of(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'  # S3's etag of a part: quoted md5


class Sender:
    """Hands parts to a hasher the way put_part does: a file per part, deleted as soon as `add` returns."""

    def __init__(self, hasher: OrderedSha256, folder: Path) -> None:
        self.hasher = hasher
        self.folder = folder
        self.listed: dict[int, str] = {}

    def send(self, number: int, data: bytes) -> None:
        path = self.folder / f"{number}.{os.urandom(4).hex()}.incoming"
        path.write_bytes(data)
        try:
            self.hasher.add(number, path, etag_of(data))
        finally:
            path.unlink()
        self.listed[number] = etag_of(data)

    def result(self, size: int) -> str | None:
        return self.hasher.sha256_of(sorted(self.listed.items()), size)


@pytest.fixture
def incoming(tmp_path: Path) -> Path:
    folder = tmp_path / "incoming"
    folder.mkdir()
    return folder


@pytest.fixture
def holding(tmp_path: Path) -> Path:
    return tmp_path / "holding" / "upload"


def files_in(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.exists() else []


PARTS = [os.urandom(3 * READ_BLOCK + 17), os.urandom(READ_BLOCK), b"tail"]
WHOLE = b"".join(PARTS)


def test_parts_in_order_are_hashed_on_arrival_and_never_held(incoming: Path, holding: Path) -> None:
    sender = Sender(OrderedSha256(holding), incoming)
    for number, data in enumerate(PARTS, start=1):
        sender.send(number, data)
        assert files_in(holding) == []

    assert sender.result(len(WHOLE)) == sha256(WHOLE)


def test_parts_out_of_order_are_held_until_their_turn(incoming: Path, holding: Path) -> None:
    sender = Sender(OrderedSha256(holding), incoming)

    sender.send(3, PARTS[2])
    assert len(files_in(holding)) == 1, "part 3 waits for 1 and 2, in a copy of its own"
    sender.send(1, PARTS[0])
    assert len(files_in(holding)) == 1
    sender.send(2, PARTS[1])

    assert sender.result(len(WHOLE)) == sha256(WHOLE)
    assert files_in(holding) == [], "held parts are deleted once hashed"
    sender.hasher.discard()
    assert not holding.exists(), "the folder goes with the hasher"


def test_a_part_sent_again_while_it_is_held_replaces_the_held_copy(incoming: Path, holding: Path) -> None:
    sender = Sender(OrderedSha256(holding), incoming)
    sender.send(2, b"old second part")
    sender.send(2, PARTS[1])
    assert len(files_in(holding)) == 1
    sender.send(1, PARTS[0])
    sender.send(3, PARTS[2])

    assert sender.result(len(WHOLE)) == sha256(WHOLE)


def test_a_part_sent_again_after_it_was_hashed_spoils_the_digest(incoming: Path, holding: Path) -> None:
    hasher = OrderedSha256(holding)
    sender = Sender(hasher, incoming)
    sender.send(3, PARTS[2])
    sender.send(1, b"first try")
    sender.send(1, PARTS[0])  # S3 keeps this one; the digest already has the first try
    sender.send(2, PARTS[1])

    assert hasher.spoiled
    assert sender.result(len(WHOLE)) is None
    assert files_in(holding) == [], "a spoiled hasher holds nothing"


def test_held_parts_past_the_cap_spoil_the_digest_and_are_freed(incoming: Path, holding: Path) -> None:
    hasher = OrderedSha256(holding, max_held_bytes=READ_BLOCK + 100)
    sender = Sender(hasher, incoming)
    sender.send(2, PARTS[1])  # READ_BLOCK bytes: under the cap
    assert not hasher.spoiled
    sender.send(3, b"x" * 101)  # together past it
    assert hasher.spoiled
    assert files_in(holding) == []

    sender.send(1, PARTS[0])
    assert sender.result(len(PARTS[0]) + len(PARTS[1]) + 101) is None


def test_without_a_holding_folder_a_part_ahead_of_its_turn_spoils_the_digest(incoming: Path) -> None:
    hasher = OrderedSha256(None)
    sender = Sender(hasher, incoming)
    sender.send(1, PARTS[0])
    assert not hasher.spoiled
    sender.send(3, PARTS[2])
    assert hasher.spoiled


@pytest.mark.parametrize(
    ("listed", "size"),
    [
        ([(1, etag_of(PARTS[0])), (2, etag_of(PARTS[1]))], len(PARTS[0]) + len(PARTS[1])),  # part 3 not listed
        ([(1, etag_of(PARTS[0])), (2, etag_of(b"other")), (3, etag_of(PARTS[2]))], len(WHOLE)),  # etag differs
        ([(1, etag_of(PARTS[0])), (3, etag_of(PARTS[2]))], len(PARTS[0]) + len(PARTS[2])),  # a gap
        ([(1, etag_of(PARTS[0])), (2, etag_of(PARTS[1])), (3, etag_of(PARTS[2]))], len(WHOLE) + 1),  # size
        ([*((n, etag_of(data)) for n, data in enumerate(PARTS, 1)), (4, etag_of(b""))], len(WHOLE)),  # never sent
    ],
)
def test_a_digest_of_other_parts_than_the_completed_ones_is_no_answer(
    incoming: Path, holding: Path, listed: list[tuple[int, str]], size: int
) -> None:
    sender = Sender(OrderedSha256(holding), incoming)
    for number, data in enumerate(PARTS, start=1):
        sender.send(number, data)

    assert sender.hasher.sha256_of(listed, size) is None


def test_etags_match_with_or_without_quotes(incoming: Path, holding: Path) -> None:
    sender = Sender(OrderedSha256(holding), incoming)
    sender.send(1, b"only")

    assert sender.hasher.sha256_of([(1, etag_of(b"only").strip('"'))], 4) == sha256(b"only")


def test_a_part_still_held_is_no_answer(incoming: Path, holding: Path) -> None:
    sender = Sender(OrderedSha256(holding), incoming)
    sender.send(1, PARTS[0])
    sender.send(3, PARTS[2])

    assert sender.hasher.sha256_of([(1, etag_of(PARTS[0]))], len(PARTS[0])) is None


def test_discard_frees_held_parts_and_ignores_later_ones(incoming: Path, holding: Path) -> None:
    hasher = OrderedSha256(holding)
    sender = Sender(hasher, incoming)
    sender.send(2, PARTS[1])
    sender.send(3, PARTS[2])
    assert len(files_in(holding)) == 2

    hasher.discard()
    assert not holding.exists()
    sender.send(4, b"late")
    assert not holding.exists()
    assert sender.result(len(PARTS[1]) + len(PARTS[2]) + 4) is None


@pytest.mark.parametrize("shuffled", [False, True], ids=["in-order-submission", "shuffled"])
@pytest.mark.parametrize("seed", range(4))
def test_parts_sent_from_many_threads_at_once_hash_in_order(
    incoming: Path, holding: Path, seed: int, shuffled: bool
) -> None:
    # Parts of several blocks each, sent 10 at a time like the SDK does: two threads feeding the digest
    # at once, or out of turn, would show in the result.
    rng = random.Random(seed)
    parts = [rng.randbytes(2 * READ_BLOCK + rng.randrange(READ_BLOCK)) for _ in range(24)]
    order = list(range(1, len(parts) + 1))
    if shuffled:
        rng.shuffle(order)
    sender = Sender(OrderedSha256(holding), incoming)

    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(lambda number: sender.send(number, parts[number - 1]), order))

    whole = b"".join(parts)
    assert not sender.hasher.spoiled
    assert sender.result(len(whole)) == sha256(whole)
    assert files_in(holding) == []
