"""What the downloader writes to the log about a source: where it is, never the secrets its URL carries.

A URL's password, query (a presigned signature, `?token=`) and fragment stay
out of the line, whatever formatter the process installed: these records are
read as `logging` hands them over (caplog), before `ferry serve`'s own
formatter scrubs anything (tests/services/test_logs.py).
"""

from __future__ import annotations

import logging

import pytest
from aiohttp import web

from ferry.services.config import DownloaderConfig
from tests.services.downloader.helpers import events


@pytest.fixture(scope="module")
def downloader_config() -> DownloaderConfig:
    return DownloaderConfig(allow_private_networks=True, retries=1, retry_backoff_seconds=0.01)


def test_a_retried_source_is_logged_by_scheme_host_port_and_path_only(grpc_stub, http_server, caplog):
    answers = iter([web.Response(status=503)])

    async def failing_once(_request: web.Request) -> web.Response:
        return next(answers, None) or web.Response(body=b"finally")

    url = http_server.route("/flaky.bin", failing_once)
    secret_url = url.replace("http://", "http://alice:PASSWORDSECRET@", 1) + "?sig=QUERYSECRET#FRAGMENTSECRET"
    caplog.set_level(logging.INFO, logger="ferry.services.downloader")
    events(grpc_stub, url=secret_url, target_dir="logged")
    [retry] = [record.getMessage() for record in caplog.records if record.getMessage().startswith("retrying ")]
    assert retry.startswith(f"retrying {url} in "), retry
    assert not any(secret in retry for secret in ("PASSWORDSECRET", "QUERYSECRET", "FRAGMENTSECRET")), retry
