"""Encode and upload benchmark: ferry's EncoderService against in-process encoders and copy tools, same run.

    .venv/bin/python bench/encode.py [--upload-mib 1024] [--repeat 3]

Prints one line per case: ferry's figure, the baseline's, and the ratio.
ferry runs as `ferry serve encoder` in its own process (local storage, or a
moto S3 server on loopback, in a process of its own, for the S3 case), so its
figures include the tensor crossing gRPC, the encode, storing the file and
returning its URL. The jpeg, mp4 and S3 cases also print the CPU each process
spent: on one host they all share the same cores.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import av
import boto3
import grpc
import numpy as np
import simplejpeg
from PIL import Image

from ferry.testing import StackProcess

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MIB, alternating_medians, median_seconds, write_random_file

from ferry.v1 import common_pb2, encoder_pb2

# The baselines encode with ferry's own defaults, so the ratio measures ferry's overhead, not settings.
SAME_SETTINGS_AS_FERRY = {
    "jpeg": {"quality": 90, "subsampling": "4:4:4"},
    "png": {"compress_level": 1},
    "webp": {"quality": 90, "method": 4},
}


def line(case: str, ferry: str, baseline_name: str, baseline: str, ratio: float | None, goal: str) -> None:
    shown = f"{ratio:6.3f}" if ratio is not None else "   n/a"
    print(f"{case:<30} ferry {ferry:>12}   {baseline_name:<22} {baseline:>12}   ratio {shown}   ({goal})", flush=True)


def ms_line(case: str, ferry_s: float, baseline_name: str, baseline_s: float, goal: str) -> None:
    """A line comparing two times per image, in milliseconds."""
    line(case, f"{ferry_s * 1000:.1f} ms", baseline_name, f"{baseline_s * 1000:.1f} ms", ferry_s / baseline_s, goal)


def natural_image(size: int = 1024) -> np.ndarray:
    """Smooth gradients plus detail: closer to a model's output than noise (which no codec compresses)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rng = np.random.default_rng(0)
    detail = rng.normal(0, 6, (size, size, 3))
    base = np.stack([np.sin(6 * x) * 0.5 + 0.5, y, (x + y) / 2], axis=-1) * 230
    return np.clip(base + detail, 0, 255).astype(np.uint8)


def durable_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def pyav_mp4(frames: np.ndarray, path: Path, fps: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "23", "preset": "medium"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upload-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--only",
        choices=("images", "mp4", "s3", "all"),
        default="all",
        help="one case: 1 (images), 2 (mp4) or the S3 upload",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-encode-"))
    repeat = args.repeat
    size = args.upload_mib * MIB
    big = work / "big.bin"
    try:
        if args.only == "s3":
            write_random_file(big, size)
            s3_case(big, size, work, repeat)
            return 0
        with StackProcess(["encoder", "--data-dir", str(work / "data")]) as stack, stack.client() as client:
            assert stack.process is not None
            processes = {"client": os.getpid(), "ferry": stack.process.pid}
            if args.only in ("images", "all"):
                image = natural_image()
                image_repeat = repeat * 10  # ~10 ms calls: more samples for a steady median
                for fmt, goal in (("jpeg", "goal <= 1.3"), ("png", "goal <= 1.1"), ("webp", "goal <= 1.1")):

                    def pillow(fmt: str = fmt) -> None:
                        buffer = io.BytesIO()
                        Image.fromarray(image).save(buffer, format=fmt.upper(), **SAME_SETTINGS_AS_FERRY[fmt])
                        (work / f"local.{fmt}").write_bytes(buffer.getvalue())

                    ferry_s, local_s = alternating_medians(
                        lambda fmt=fmt: client.encode_tensor(image, fmt), pillow, image_repeat
                    )
                    ms_line(f"1. 1024x1024x3 -> {fmt}", ferry_s, "Pillow in-process", local_s, goal)
                    # where the CPU went; then ferry's own jpeg library, one call on one core: what the strips buy
                    if fmt == "jpeg":
                        cpu_line(
                            "ferry path",
                            cpu_per_run(lambda: client.encode_tensor(image, "jpeg"), processes, 100),
                            "ms per image",
                            1000,
                        )
                        cpu_line("Pillow", cpu_per_run(pillow, {"bench": os.getpid()}, 100), "ms per image", 1000)

                        def turbo() -> None:
                            data = simplejpeg.encode_jpeg(image, quality=90, colorspace="RGB", colorsubsampling="444")
                            (work / "local-turbo.jpg").write_bytes(data)

                        ferry_s, turbo_s = alternating_medians(
                            lambda: client.encode_tensor(image, "jpeg"), turbo, image_repeat
                        )
                        ms_line("1. 1024x1024x3 -> jpeg", ferry_s, "simplejpeg in-process", turbo_s, "report")

                        # what ferry's local storage adds to a write: fsync the file and its folder
                        def pillow_durable() -> None:
                            buffer = io.BytesIO()
                            Image.fromarray(image).save(buffer, format="JPEG", **SAME_SETTINGS_AS_FERRY["jpeg"])
                            durable_write(work / "durable.jpeg", buffer.getvalue())

                        ferry_s, durable_s = alternating_medians(
                            lambda: client.encode_tensor(image, "jpeg"), pillow_durable, image_repeat
                        )
                        ms_line("1. 1024x1024x3 -> jpeg", ferry_s, "Pillow + fsynced write", durable_s, "report")
            if args.only == "images":
                return 0

            frames = np.stack([np.roll(natural_image(512), 4 * i, axis=1) for i in range(120)])
            ferry_s, local_s = alternating_medians(
                lambda: client.encode_tensor(frames, "mp4", fps=24),
                lambda: pyav_mp4(frames, work / "local.mp4", 24),
                repeat,
            )
            line(
                "2. 120x512x512 -> mp4",
                f"{ferry_s:.2f} s",
                "PyAV in-process",
                f"{local_s:.2f} s",
                ferry_s / local_s,
                "goal <= 1.1",
            )
            cpu_line(
                "ferry path",
                cpu_per_run(lambda: client.encode_tensor(frames, "mp4", fps=24), processes, 3),
                "seconds per video",
                1,
            )
            cpu_line(
                "PyAV",
                cpu_per_run(lambda: pyav_mp4(frames, work / "local.mp4", 24), {"bench": os.getpid()}, 3),
                "seconds per video",
                1,
            )
            if shutil.which("ffmpeg"):
                command = [
                    "ffmpeg",
                    "-loglevel",
                    "error",
                    "-y",
                    "-f",
                    "rawvideo",
                    "-pix_fmt",
                    "rgb24",
                    "-s",
                    "512x512",
                    "-r",
                    "24",
                    "-i",
                    "-",
                    "-c:v",
                    "libx264",
                    "-crf",
                    "23",
                    "-preset",
                    "medium",
                    "-pix_fmt",
                    "yuv420p",
                    str(work / "ffmpeg.mp4"),
                ]
                ffmpeg_s = median_seconds(lambda: subprocess.run(command, input=frames.tobytes(), check=True), repeat)
                line(
                    "2. 120x512x512 -> mp4",
                    f"{ferry_s:.2f} s",
                    "ffmpeg raw on stdin",
                    f"{ffmpeg_s:.2f} s",
                    ferry_s / ffmpeg_s,
                    "report",
                )
            else:
                line(
                    "2. 120x512x512 -> mp4", f"{ferry_s:.2f} s", "ffmpeg raw on stdin", "not installed", None, "report"
                )
            if args.only == "mp4":
                return 0

            write_random_file(big, size)
            ferry_s = median_seconds(lambda: client.upload_file(big, expires_in=3600), repeat)
            cp_s = median_seconds(lambda: subprocess.run(["cp", str(big), str(work / "copy.bin")], check=True), repeat)
            line(
                f"3. {args.upload_mib} MiB upload, local CDN",
                f"{size / ferry_s / MIB:.0f} MiB/s",
                "cp",
                f"{size / cp_s / MIB:.0f} MiB/s",
                cp_s / ferry_s,
                "report",
            )

            # 4. Raw bytes into the service: an Encode whose shape asks for one byte more than is
            # sent, so the server reads everything and answers INVALID_ARGUMENT without encoding.
            raw = np.zeros(256 * MIB, dtype=np.uint8)
            header = encoder_pb2.EncodeHeader(
                tensor=common_pb2.TensorHeader(dtype=common_pb2.DATA_TYPE_UINT8, shape=[raw.size + 1]),
                format=encoder_pb2.MEDIA_FORMAT_PNG,
            )

            chunk = bytes(MIB)

            def transfer() -> None:
                requests = [encoder_pb2.EncodeRequest(header=header)]
                requests += [encoder_pb2.EncodeRequest(chunk=chunk)] * (raw.size // MIB)
                try:
                    client.encoder.Encode(iter(requests))
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

            transfer_s = median_seconds(transfer, repeat)
            line("4. tensor bytes into service", f"{raw.size / transfer_s / 1e9:.2f} GB/s", "", "", None, "report")

        s3_case(big, size, work, repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU a process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_run(run: Callable[[], object], processes: dict[str, int], repeat: int) -> dict[str, float]:
    """CPU seconds each process spends per `run` (clock ticks are coarse: give `repeat` a second or more)."""
    before = {role: cpu_seconds(pid) for role, pid in processes.items()}
    for _ in range(repeat):
        run()
    return {role: (cpu_seconds(pid) - before[role]) / repeat for role, pid in processes.items()}


def cpu_line(path: str, spent: dict[str, float], unit: str, scale: float) -> None:
    """Where the cores went: on one host every process of a case shares the same cores."""
    parts = ", ".join(f"{role} {seconds * scale:.1f}" for role, seconds in spent.items())
    print(f"   CPU {unit}, {path}: {parts} (total {sum(spent.values()) * scale:.1f})", flush=True)


@contextmanager
def moto_process() -> Iterator[tuple[str, int]]:
    """moto's S3 server in a process of its own, as a real endpoint is. Threaded inside this process it
    would share the GIL with the client being timed: boto3's ten upload threads most of all.
    Yields its endpoint and pid."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    moto = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or moto.poll() is not None:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", moto.pid
    finally:
        moto.terminate()
        moto.wait()


def s3_case(big: Path, size: int, work: Path, repeat: int) -> None:
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    with moto_process() as (endpoint, moto_pid):
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="bench")

        def empty_bucket() -> None:  # untimed: moto keeps every object, and the next run should not pay for them
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench"):
                if page.get("Contents"):
                    s3.delete_objects(Bucket="bench", Delete={"Objects": [{"Key": o["Key"]} for o in page["Contents"]]})

        flags = [
            "encoder",
            "--data-dir",
            str(work / "data-s3"),
            "--storage",
            "s3://bench/ferry",
            "--s3-endpoint-url",
            endpoint,
        ]
        with StackProcess(flags) as stack, stack.client() as client:
            assert stack.process is not None
            processes = {"client": os.getpid(), "ferry": stack.process.pid, "moto": moto_pid}
            runs = {
                "ferry": (lambda: client.upload_file(big)),
                "boto3": (lambda: s3.upload_file(str(big), "bench", "baseline/big.bin")),
            }
            times: dict[str, list[float]] = {name: [] for name in runs}
            cpu: dict[str, dict[str, float]] = {name: dict.fromkeys(processes, 0.0) for name in runs}
            for _ in range(repeat):  # turn about, so moto's state and background load hit both alike
                for name, upload in runs.items():
                    began = time.perf_counter()
                    spent = cpu_per_run(upload, processes, 1)
                    times[name].append(time.perf_counter() - began)
                    for role, seconds in spent.items():
                        cpu[name][role] += seconds
                    empty_bucket()
        ferry_s, boto_s = statistics.median(times["ferry"]), statistics.median(times["boto3"])
        line(
            f"3. {size // MIB} MiB upload, moto S3",
            f"{size / ferry_s / MIB:.0f} MiB/s",
            "boto3 upload_file",
            f"{size / boto_s / MIB:.0f} MiB/s",
            boto_s / ferry_s,
            "goal >= 1.0",
        )
        per_gib = (1 << 30) / (repeat * size)
        cpu_line("ferry path", cpu["ferry"], "seconds per GiB", per_gib)
        cpu_line(
            "boto3 path",
            {role: seconds for role, seconds in cpu["boto3"].items() if role != "ferry"},
            "seconds per GiB",
            per_gib,
        )


if __name__ == "__main__":
    sys.exit(main())
