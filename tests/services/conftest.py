"""Fixtures the storage tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.harness import RawHttpServer


@pytest.fixture
async def down() -> AsyncIterator[RawHttpServer]:
    """An S3 endpoint that is down: it reads each request and hangs up without answering."""
    endpoint = RawHttpServer(b"")
    await endpoint.start()
    yield endpoint
    await endpoint.stop()
