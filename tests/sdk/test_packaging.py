"""A wheel built with `pip wheel .` installs in a clean venv, and the SDK imports without torch or av."""

import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

IMPORT_CHECK = """
import importlib.util, ferry, ferry.v1.downloader_pb2_grpc, ferry.v1.encoder_pb2_grpc, ferry.v1.inference_pb2_grpc
import ferry.services, ferry.inference
# the services ship in the wheel (their own dependencies come with the [services] extra)
assert importlib.util.find_spec("ferry.services.downloader.engine") is not None
assert importlib.util.find_spec("torch") is None, "torch leaked into the SDK install"
assert importlib.util.find_spec("av") is None, "av leaked into the SDK install"
client = ferry.Client("127.0.0.1:1")
client.close()
print("ok", ferry.__version__)
"""


PACKAGE_DIRS = {"ferry": "sdk", "ferry.services": "services", "ferry.inference": "inference"}


def test_every_code_folder_is_a_listed_package():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for package, folder in PACKAGE_DIRS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *relative.parts]))
    assert found == listed


@pytest.mark.timeout(600)
def test_wheel_installs_in_a_clean_venv_and_the_sdk_stays_light(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
    )
    (wheel,) = wheels.glob("ferry_media-*.whl")
    env_dir = tmp_path / "clean"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", str(wheel)], check=True)
    result = subprocess.run([python, "-c", IMPORT_CHECK], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
