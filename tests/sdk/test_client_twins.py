"""`Client` and `AsyncClient` are twins: the same methods, the same signatures, the same behaviour.

The signature test is what keeps them from drifting again: a method or a parameter added to one alone fails it.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
import re
from pathlib import Path

import grpc
import numpy as np
import pytest

import ferry
from ferry import AsyncClient, Client
from ferry.testing import StackProcess

MIB = 1 << 20
# The return types where the async twin's differ by being async.
SYNC_TYPES = re.compile(r"\b(Iterator|RequestHandle|RealtimeConnection)\b")


def public_methods(cls: type) -> dict[str, object]:
    return {name: member for name, member in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")}


def as_async(annotation: str) -> str:
    return SYNC_TYPES.sub(lambda match: f"Async{match[1]}", annotation)


def test_the_twins_have_the_same_public_methods():
    assert public_methods(Client).keys() == public_methods(AsyncClient).keys()


@pytest.mark.parametrize("name", sorted(public_methods(Client)))
def test_each_method_has_the_same_parameters_and_return_type(name):
    sync, asynchronous = inspect.signature(getattr(Client, name)), inspect.signature(getattr(AsyncClient, name))
    assert list(sync.parameters.values()) == list(asynchronous.parameters.values())
    assert as_async(str(sync.return_annotation)) == str(asynchronous.return_annotation)


@pytest.mark.parametrize("name", sorted(set(public_methods(AsyncClient)) - {"realtime"}))
def test_every_async_method_is_awaited_or_iterated(name):
    method = getattr(AsyncClient, name)
    assert inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method)


def test_the_same_constructor():
    assert inspect.signature(Client.__init__) == inspect.signature(AsyncClient.__init__)


# -- behaviour against a real stack -------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack_data(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="module")
def stack(stack_data):
    with StackProcess(["--data-dir", str(stack_data)]) as stack:
        yield stack


def big_file(folder: Path, size: int) -> Path:
    path = folder / "big.bin"
    with open(path, "wb") as f:
        block = os.urandom(MIB)
        for offset in range(0, size, MIB):
            f.write(block[: min(MIB, size - offset)])
    return path


@pytest.mark.timeout(300)
async def test_async_upload_file_goes_multipart_past_100_mib_and_reports_progress(stack, tmp_path):
    path = big_file(tmp_path, 101 * MIB + 7)
    seen: list[tuple[int, int]] = []
    async with AsyncClient(stack.grpc_address) as client:
        stored = await client.upload_file(path, on_progress=lambda sent, total: seen.append((sent, total)))
    assert stored.file_size == path.stat().st_size
    assert stored.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert seen[-1] == (path.stat().st_size,) * 2 and len(seen) > 100


@pytest.mark.timeout(300)
async def test_a_failing_async_multipart_upload_is_aborted(stack, stack_data, tmp_path):
    path = big_file(tmp_path, 101 * MIB)

    def shrink(sent: int, total: int) -> None:
        if sent > 30 * MIB:
            os.truncate(path, 40 * MIB)  # parts past 40 MiB can no longer be read

    async with AsyncClient(stack.grpc_address) as client:
        with pytest.raises(OSError, match=r"ended .* bytes early"):  # the reason, as the sync twin says it
            await client.upload_file(path, on_progress=shrink)
    assert list((stack_data / ".ferry" / "storage" / "uploads").iterdir()) == [], "AbortUpload removed every part"


async def test_small_uploads_report_progress_in_both_twins(stack, tmp_path):
    path = tmp_path / "small.bin"
    path.write_bytes(os.urandom(3 * MIB + 5))
    async_seen: list[tuple[int, int]] = []
    async with AsyncClient(stack.grpc_address) as client:
        await client.upload_file(path, on_progress=lambda *report: async_seen.append(report))
    sync_seen: list[tuple[int, int]] = []
    with Client(stack.grpc_address) as client:
        await asyncio.to_thread(lambda: client.upload_file(path, on_progress=lambda *report: sync_seen.append(report)))
    assert async_seen == sync_seen and async_seen[-1] == (path.stat().st_size,) * 2


async def test_typed_encode_options_reach_the_encoder(stack):
    pixels = np.full((16, 16, 3), 200, np.uint8)
    async with AsyncClient(stack.grpc_address) as client:
        (stored,) = await client.encode_tensor(pixels, "jpeg", quality=95, file_name="q95")
    assert stored.file_name == "q95.jpg" and stored.content_type == "image/jpeg"


async def test_health_of_a_dead_address_is_a_ferry_error_in_both_twins(dead_address):
    with Client(dead_address) as client, pytest.raises(ferry.FerryError) as sync_caught:
        client.health(timeout=1)
    async with AsyncClient(dead_address) as client:
        with pytest.raises(ferry.FerryError) as async_caught:
            await client.health(timeout=1)
    assert sync_caught.value.code == async_caught.value.code
    assert sync_caught.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def test_a_directory_is_not_uploaded_by_either_twin(stack, tmp_path):
    with Client(stack.grpc_address) as client, pytest.raises(IsADirectoryError):
        client.upload_file(tmp_path)
    async with AsyncClient(stack.grpc_address) as client:
        with pytest.raises(IsADirectoryError):
            await client.upload_file(tmp_path)


async def test_wait_until_serving_in_both_twins(stack):
    with Client(stack.grpc_address) as client:
        client.wait_until_serving(timeout=10)
    async with AsyncClient(stack.grpc_address) as client:
        await client.wait_until_serving(timeout=10)
