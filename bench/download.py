"""Download benchmark: ferry's DownloaderService against curl and in-process decoding, same run.

    .venv/bin/python bench/download.py [--size-mib 1024] [--repeat 3]

Prints one line per case: ferry's figure, the baseline's, and the ratio.
The source is a local aiohttp server (sendfile) in its own process; ferry runs
as `ferry serve downloader` in another, so the server's peak RSS is its own.
ferry's time includes the fsync it does before renaming into place; curl's
does not (curl never fsyncs).

Case 1b holds ferry to curl followed by `sync` of its file: both durable.

Cases 5-7 fetch from a source that caps each connection's rate (as hosts of
model weights do; bench/capped_source.py): ferry as configured by default
(ranged: 8 connections) against ferry held to one stream (a threshold above the
file's size), against `curl -o`, and against `aria2c -x8 -s8` where installed.
Each pair runs turn about.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ferry.testing import StackProcess

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MIB, alternating_medians, median_seconds, write_random_file

HTTP_SOURCE = Path(__file__).resolve().parent.parent / "scripts" / "http_source.py"
CAPPED_SOURCE = Path(__file__).resolve().parent / "capped_source.py"


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def line(case: str, ferry: str, baseline_name: str, baseline: str, ratio: float, goal: str) -> None:
    print(f"{case:<34} ferry {ferry:>14}   {baseline_name} {baseline:>14}   ratio {ratio:6.3f}   ({goal})", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--capped-size-mib", type=int, default=1024, help="the file cases 5-7 fetch")
    parser.add_argument(
        "--cap-mib-per-second", type=float, default=20.0, help="the capped source's rate per connection"
    )
    args = parser.parse_args()
    size = args.size_mib * MIB
    if shutil.which("curl") is None:
        sys.exit("curl is needed for the baseline")

    work = Path(tempfile.mkdtemp(prefix="ferry-bench-"))
    source_dir, data_dir, curl_dir = work / "source", work / "data", work / "curl"
    for folder in (source_dir, data_dir, curl_dir):
        folder.mkdir()
    write_random_file(source_dir / "big.bin", size)
    source = subprocess.Popen([sys.executable, str(HTTP_SOURCE), str(source_dir)], stdout=subprocess.PIPE, text=True)
    assert source.stdout is not None
    url = f"http://127.0.0.1:{source.stdout.readline().split()[1]}/big.bin"
    stack = StackProcess(["downloader", "--data-dir", str(data_dir), "--allow-hosts", "127.0.0.1/32"]).start()
    try:
        with stack.client() as client:
            print(f"file {args.size_mib} MiB from {url}, median of {args.repeat}", flush=True)

            def ferry_full() -> None:
                client.download_file(url, target_dir="bench", force=True)

            def curl_full() -> None:
                subprocess.run(["curl", "-sS", "-o", str(curl_dir / "big.bin"), url], check=True)

            def curl_durable() -> None:
                """What ferry guarantees, from curl: the file on disk before it is used (ferry fsyncs its own)."""
                curl_full()
                subprocess.run(["sync", str(curl_dir / "big.bin")], check=True)

            def rate(seconds: float) -> str:
                return f"{size / seconds / MIB:.0f} MiB/s"

            ferry_s, curl_s = alternating_medians(ferry_full, curl_full, args.repeat)
            line(
                "1. download to disk (throughput)",
                rate(ferry_s),
                "curl -o",
                rate(curl_s),
                curl_s / ferry_s,
                "goal >= 0.9",
            )
            ferry_s, durable_s = alternating_medians(ferry_full, curl_durable, args.repeat)
            line(
                "1b. durable download",
                rate(ferry_s),
                "curl -o; sync FILE",
                rate(durable_s),
                durable_s / ferry_s,
                "goal >= 1.0",
            )

            def ferry_hit() -> None:
                assert client.download_file(url, target_dir="bench").exists()

            hit_s = median_seconds(ferry_hit, max(args.repeat, 5))
            line(
                "2. cache hit vs full download",
                f"{hit_s * 1000:.1f} ms",
                "full",
                f"{ferry_s * 1000:.0f} ms",
                hit_s / ferry_s,
                "goal <= 0.02",
            )

            payload = os.urandom(8 * MIB)
            uri = "data:application/octet-stream;base64," + base64.b64encode(payload).decode()

            def ferry_data_uri() -> None:
                client.download_file(uri, target_dir="bench-data", force=True)

            def inprocess_decode() -> None:
                (work / "decoded.bin").write_bytes(base64.b64decode(uri.split(",", 1)[1]))

            ferry_uri_s = median_seconds(ferry_data_uri, args.repeat)
            local_s = median_seconds(inprocess_decode, args.repeat)
            line(
                "3. 8 MiB data URI",
                f"{ferry_uri_s * 1000:.1f} ms",
                "b64decode+write",
                f"{local_s * 1000:.1f} ms",
                ferry_uri_s / local_s,
                "report",
            )

        assert stack.process is not None
        rss = peak_rss_mib(stack.process.pid)
        line("4. server peak RSS during case 1", f"{rss:.0f} MiB", "goal", "200 MiB", rss / 200, "goal < 1.0")
        capped_cases(work, args.capped_size_mib, args.cap_mib_per_second, args.repeat)
    finally:
        stack.stop()
        source.terminate()
        source.wait()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def capped_cases(work: Path, size_mib: int, cap: float, repeat: int) -> None:
    """Cases 5-7: a source capping each connection at `cap` MiB/s serving a `size_mib` MiB file."""
    source_dir, curl_dir, aria_dir = work / "capped-source", work / "capped-curl", work / "capped-aria2"
    for folder in (source_dir, curl_dir, aria_dir):
        folder.mkdir()
    write_random_file(source_dir / "weights.bin", size_mib * MIB)
    source = subprocess.Popen(
        [sys.executable, str(CAPPED_SOURCE), str(source_dir), str(cap)], stdout=subprocess.PIPE, text=True
    )
    assert source.stdout is not None
    url = f"http://127.0.0.1:{source.stdout.readline().split()[1]}/weights.bin"
    common = ["downloader", "--allow-hosts", "127.0.0.1/32"]
    ranged = StackProcess([*common, "--data-dir", str(work / "data-ranged")])
    one_stream = StackProcess(
        [*common, "--data-dir", str(work / "data-one-stream"), "--parallel-threshold-mib", str(2 * size_mib)]
    )
    try:
        ranged.start()
        one_stream.start()
        with ranged.client() as ranged_client, one_stream.client() as one_stream_client:
            print(f"file {size_mib} MiB from a source capping each connection at {cap:g} MiB/s", flush=True)

            def ferry_ranged() -> None:
                ranged_client.download_file(url, target_dir="bench", force=True)

            def ferry_one_stream() -> None:
                one_stream_client.download_file(url, target_dir="bench", force=True)

            def curl() -> None:
                subprocess.run(["curl", "-sS", "-o", str(curl_dir / "weights.bin"), url], check=True)

            def aria2c() -> None:
                aria = ["aria2c", "-q", "-x8", "-s8", "--allow-overwrite=true", "--auto-file-renaming=false"]
                subprocess.run([*aria, "-d", str(aria_dir), "-o", "weights.bin", url], check=True)

            def rate(seconds: float) -> str:
                return f"{size_mib / seconds:.0f} MiB/s"

            ranged_s, one_stream_s = alternating_medians(ferry_ranged, ferry_one_stream, repeat)
            line(
                "5. capped: ranged vs one stream",
                rate(ranged_s),
                "1 stream",
                rate(one_stream_s),
                one_stream_s / ranged_s,
                "report",
            )
            ranged_s, curl_s = alternating_medians(ferry_ranged, curl, repeat)
            line(
                "6. capped: ranged vs curl -o", rate(ranged_s), "curl -o", rate(curl_s), curl_s / ranged_s, "goal >= 6"
            )
            if shutil.which("aria2c") is None:
                print("7. capped: ranged vs aria2c -x8 -s8   skipped: aria2c is not installed (Debian: aria2)")
            else:
                ranged_s, aria_s = alternating_medians(ferry_ranged, aria2c, repeat)
                line(
                    "7. capped: ranged vs aria2c -x8",
                    rate(ranged_s),
                    "aria2c",
                    rate(aria_s),
                    aria_s / ranged_s,
                    "goal >= 1.0",
                )
        assert ranged.process is not None
        rss = peak_rss_mib(ranged.process.pid)
        line("8. server peak RSS, ranged (5-7)", f"{rss:.0f} MiB", "goal", "200 MiB", rss / 200, "goal < 1.0")
    finally:
        ranged.stop()
        one_stream.stop()
        source.terminate()
        source.wait()


if __name__ == "__main__":
    sys.exit(main())
