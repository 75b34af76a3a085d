"""The runner alone (`ferry serve inference --downloader A --encoder A`) while its services go away and come back."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

import ferry
from ferry.testing import StackProcess
from tests.harness import wait_for

HERE = Path(__file__).parent


def media_services(data: Path, port: str = "0") -> StackProcess:
    return StackProcess(
        ["downloader", "encoder", "--data-dir", str(data), "--allow-hosts", "127.0.0.1/32", "--grpc-port", port]
    )


def test_encoder_and_downloader_down_is_unavailable_then_recovers_when_they_return(tmp_path, http_server):
    (http_server.root / "in.png").write_bytes(b"z" * 64)
    url = f"{http_server.base_url}/in.png"
    services = media_services(tmp_path / "media").start()
    port = services.grpc_address.rsplit(":", 1)[1]
    apps = ["--app", f"{HERE / 'media_app.py'}:MediaApp", "--app", f"{HERE / 'sample_app.py'}:SampleApp"]
    runner = StackProcess(
        [
            "inference",
            "--data-dir",
            str(tmp_path / "runner"),
            "--downloader",
            services.grpc_address,
            "--encoder",
            services.grpc_address,
            *apps,
        ]
    ).start()
    try:
        with runner.client() as client:
            assert client.run("media", {"image_url": url}, path="/inspect")["sizes"] == {"image_url": [64]}
            assert client.run("sample", {"size": 8}, path="/image")["image"]["url"]

            services.process.kill()  # a crash, not a drain
            services.stop()
            for app, arguments, path in (("media", {"image_url": url}, "/inspect"), ("sample", {"size": 8}, "/image")):
                with pytest.raises(ferry.FerryError) as caught:
                    client.run(app, arguments, path=path)
                assert caught.value.code == grpc.StatusCode.UNAVAILABLE, f"{path} while its service is down"
            assert client.run("sample", {"text": "still here"}) == {"text": "still here"}, (
                "work that needs neither goes on"
            )

            services = media_services(tmp_path / "media", port).start()

            def downloads_again() -> bool:
                try:
                    return client.run("media", {"image_url": url}, path="/inspect")["sizes"] == {"image_url": [64]}
                except ferry.FerryError as error:
                    assert error.code == grpc.StatusCode.UNAVAILABLE
                    return False

            wait_for(downloads_again, "downloads through the restarted downloader", timeout=60)
            assert client.run("sample", {"size": 8}, path="/image")["image"]["url"]
    finally:
        runner.stop()
        services.stop()
