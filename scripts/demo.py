#!/usr/bin/env python3
"""`make demo`: start the embedded stack, exercise it end to end, stop it.

Each landed issue extends this walk-through with its real work.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

import ferry
from ferry.client import SERVICE_NAMES
from ferry.progress import ProgressDisplay
from ferry.testing import StackProcess
from ferry.v1 import inference_pb2

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / ".demo-data"
MIB = 1 << 20
# The built-in example apps, hosted by the demo's stack beside its services.
EXAMPLE_APPS = (
    "ferry.inference.apps.upscale:Upscaler",
    "ferry.inference.apps.text_to_image:TextToImage",
    "ferry.inference.apps.text_to_video:TextToVideo",
    "ferry.inference.apps.text_to_audio:TextToAudio",
)


def start_source(folder: Path) -> tuple[subprocess.Popen[str], str]:
    """A local HTTP server standing in for the internet (this machine has none)."""
    folder.mkdir(parents=True, exist_ok=True)
    sample = folder / "sample-weights.bin"
    if not sample.exists():
        sample.write_bytes(os.urandom(256 * MIB))
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "http_source.py"), str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    port = process.stdout.readline().split()[1]
    return process, f"http://127.0.0.1:{port}"


def show_health(stack: StackProcess, client: ferry.Client) -> None:
    print(f"health: server {client.health()}")
    for name in SERVICE_NAMES:
        print(f"health: {name} {client.health(name)}")
    with grpc.insecure_channel(stack.grpc_address) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    print("reflection lists:", ", ".join(sorted(services)))


def show_downloads(client: ferry.Client, source_url: str) -> None:
    url = f"{source_url}/sample-weights.bin"
    display = ProgressDisplay("sample-weights.bin", stream=sys.stdout)
    path = client.download_file(
        url,
        target_dir="inputs",
        force=True,
        on_progress=lambda p: display.update(p.bytes_done, p.total_bytes, p.bytes_per_second),
    )
    display.finish()
    print(f"downloaded: {path} ({path.stat().st_size} bytes)")
    print(f"again: {client.download_file(url, target_dir='inputs')} (cache hit: a HEAD, no body transferred)")
    uri = "data:text/plain;base64," + base64.b64encode(b"hello from a data URI\n").decode()
    print(f"data URI: {client.download_file(uri, target_dir='inputs')} (decoded locally, no network)")
    try:
        client.download_file("http://169.254.169.254/latest/meta-data/")
    except ferry.FerryError as error:
        print(f"refused: {error.code.name} {error.reason}: {error.message}")


def show_encodes(client: ferry.Client) -> str:
    """A model's outputs: an image, a short video with sound, and an audio clip, each at a URL; returns the image's."""
    y, x = np.mgrid[0:256, 0:256] / 256
    image = np.stack([x, y, (x + y) / 2], axis=-1).astype(np.float32)  # floats in [0, 1], HWC
    (png,) = client.encode_tensor(image, "png", file_name="gradient")
    print(f"image: {png.url} ({png.image.width}x{png.image.height}, {png.file_size} bytes)")
    frames = np.stack([np.roll((image * 255).astype(np.uint8), 8 * t, axis=1) for t in range(48)])
    t = np.arange(2 * 16000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    (mp4,) = client.encode_tensor(frames, "mp4", fps=24, audio=(tone, 16000), file_name="scroll")
    print(f"video: {mp4.url} ({mp4.video.frame_count} frames at {mp4.video.fps:g} fps, audio: {mp4.video.has_audio})")
    (wav,) = client.encode_tensor(tone, "wav", sample_rate=16000, file_name="a440", expires_in=3600)
    print(
        f"audio: {wav.url} ({wav.audio.duration_seconds:.1f} s, "
        f"expires {wav.expires_at.ToDatetime():%Y-%m-%d %H:%M} UTC)"
    )
    return png.url


def show_endpoints(client: ferry.Client) -> None:
    """What the stack hosts, as a playground discovers it: each app's endpoints and their input fields."""
    for app in client.inference.ListEndpoints(inference_pb2.ListEndpointsRequest()).apps:
        for endpoint in app.endpoints:
            fields = ", ".join(json.loads(endpoint.input_schema_json).get("properties", {}))
            print(f"app: {app.app_id} {endpoint.path} ({app.machine_type}) inputs: {fields}")


def timed_run(client: ferry.Client, app: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], float]:
    began = time.monotonic()
    output = client.run(app, arguments)
    return output, time.monotonic() - began


def show_video_progress(update: ferry.Queued | ferry.InProgress) -> None:
    """One line per eighth of the clip: every frame would be a screenful."""
    if isinstance(update, ferry.Queued):
        print(f"text-to-video: queued at position {update.position}")
    elif update.progress is not None:
        done, total = int(update.progress.current), int(update.progress.total)
        if total and (done % max(1, total // 8) == 0 or done == total):
            print(f"text-to-video: frame {done}/{total}")


def show_apps(client: ferry.Client, image_url: str) -> None:
    """Each built-in example app once, through the stack, with small inputs; prints where its output lives."""
    show_endpoints(client)
    # The upscaler fetches the demo's own gradient from the CDN: the guard lets 127.0.0.1 through for the demo only.
    output, seconds = timed_run(client, "upscaler", {"image_url": image_url, "scale": 2, "sharpen": 0.5})
    image = ferry.Image.model_validate(output["image"])
    print(f"upscaler: {image.url} ({image.width}x{image.height}, {seconds:.1f} s)")

    output, seconds = timed_run(
        client, "text-to-image", {"prompt": "a ferry at dawn", "width": 256, "height": 256, "seed": 7}
    )
    image = ferry.Image.model_validate(output["image"])
    print(f"text-to-image: {image.url} ({image.width}x{image.height}, seed {output['seed']}, {seconds:.1f} s)")

    began = time.monotonic()
    arguments = {"prompt": "a ferry crossing", "num_frames": 48, "fps": 24, "width": 256, "height": 256}
    output = client.subscribe("text-to-video", arguments, on_queue_update=show_video_progress)
    video = ferry.Video.model_validate(output["video"])
    print(
        f"text-to-video: {video.url} ({video.frame_count} frames at {video.fps:g} fps, "
        f"{video.width}x{video.height}, {time.monotonic() - began:.1f} s)"
    )

    output, seconds = timed_run(client, "text-to-audio", {"prompt": "ferry demo", "duration_seconds": 2.0})
    audio = ferry.Audio.model_validate(output["audio"])
    print(f"text-to-audio: {audio.url} ({audio.duration_seconds:.1f} s at {audio.sample_rate} Hz, {seconds:.1f} s)")


def show_http(stack: StackProcess) -> None:
    """The HTTP face on the CDN's port: the playground page, Connect, and the reference queue API."""
    with urllib.request.urlopen(f"{stack.cdn_url}/playground", timeout=30) as page:
        print(f"playground: {stack.cdn_url}/playground (HTTP {page.status}, {len(page.read())} bytes)")
    listed = http_json(f"{stack.cdn_url}/ferry.v1.InferenceService/ListEndpoints", "POST", {})
    print(f"connect: ListEndpoints lists {', '.join(app['appId'] for app in listed['apps'])}")
    queue = f"{stack.cdn_url}/queue/ferry/text-to-audio"
    submitted = http_json(queue, "POST", {"prompt": "over http", "duration_seconds": 0.5})
    print(f"queue API: submitted {submitted['request_id']}, status at {submitted['status_url']}")
    with urllib.request.urlopen(f"{submitted['status_url']}/stream", timeout=60) as events:
        lines = events.read().decode().splitlines()
    statuses = [json.loads(line.removeprefix("data: "))["status"] for line in lines if line.startswith("data: ")]
    audio = http_json(submitted["response_url"], "GET")["audio"]
    print(f"queue API: {' → '.join(dict.fromkeys(statuses))}; result {audio['url']}")


def http_json(url: str, method: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def main() -> int:
    source, source_url = start_source(DEMO_DIR / "source")
    # Only the demo's local source is let through the network guard.
    apps = [flag for app in EXAMPLE_APPS for flag in ("--app", app)]
    stack = StackProcess(["--data-dir", str(DEMO_DIR / "data"), "--allow-hosts", "127.0.0.1/32", *apps]).start()
    print(stack.ready_line, flush=True)
    print(f"playground: {stack.cdn_url}/playground (open it while the demo runs)", flush=True)
    try:
        with stack.client() as client:
            show_health(stack, client)
            show_downloads(client, source_url)
            image_url = show_encodes(client)
            show_apps(client, image_url)
        show_http(stack)
    finally:
        stack.signal(2)  # SIGINT, as Ctrl-C would
        code = stack.wait()
        stack.stop()
        source.terminate()
        source.wait()
    print(f"stack stopped (exit {code})")
    return code


if __name__ == "__main__":
    sys.exit(main())
