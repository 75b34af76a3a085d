"""Download benchmark: ferry's DownloaderService against curl and in-process decoding, same run.

    .venv/bin/python bench/download.py [--size-mib 1024] [--repeat 3]

Prints one line per case: ferry's figure, the baseline's, and the ratio.
The source is a local aiohttp server (sendfile) in its own process; ferry runs
as `ferry serve downloader` in another, so the server's peak RSS is its own.
ferry's time includes the fsync it does before renaming into place; curl's
does not (curl never fsyncs).
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
from common import MIB, median_seconds, write_random_file

HTTP_SOURCE = Path(__file__).resolve().parent.parent / "scripts" / "http_source.py"


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

            ferry_s = median_seconds(ferry_full, args.repeat)
            curl_s = median_seconds(curl_full, args.repeat)
            ferry_rate, curl_rate = size / ferry_s / MIB, size / curl_s / MIB
            line(
                "1. download to disk (throughput)",
                f"{ferry_rate:.0f} MiB/s",
                "curl -o",
                f"{curl_rate:.0f} MiB/s",
                ferry_rate / curl_rate,
                "goal >= 0.9",
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
    finally:
        stack.stop()
        source.terminate()
        source.wait()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
