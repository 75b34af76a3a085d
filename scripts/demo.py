#!/usr/bin/env python3
"""`make demo`: start the embedded stack, exercise it end to end, stop it.

Each landed issue extends this walk-through with its real work.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

import ferry
from ferry.client import SERVICE_NAMES
from ferry.progress import ProgressDisplay
from ferry.testing import StackProcess

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / ".demo-data"
MIB = 1 << 20


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


def show_encodes(client: ferry.Client) -> None:
    """A model's outputs: an image, a short video with sound, and an audio clip, each at a URL."""
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
    print(f"audio: {wav.url} ({wav.audio.duration_seconds:.1f} s, expires {wav.expires_at.ToDatetime():%Y-%m-%d %H:%M} UTC)")


def main() -> int:
    source, source_url = start_source(DEMO_DIR / "source")
    # Only the demo's local source is let through the network guard.
    stack = StackProcess(["--data-dir", str(DEMO_DIR / "data"), "--allow-hosts", "127.0.0.1/32"]).start()
    print(stack.ready_line, flush=True)
    try:
        with stack.client() as client:
            show_health(stack, client)
            show_downloads(client, source_url)
            show_encodes(client)
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
