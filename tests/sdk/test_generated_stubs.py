"""The committed stubs in sdk/v1 are exactly what scripts/gen-protos produces from protos/."""

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_regenerating_the_stubs_changes_nothing(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-protos"), str(tmp_path)], check=True, capture_output=True
    )
    committed = ROOT / "sdk" / "v1"
    generated = sorted(p.name for p in tmp_path.iterdir())
    assert generated == sorted(p.name for p in committed.iterdir() if p.is_file() and p.suffix in (".py", ".pyi"))
    _, mismatch, errors = filecmp.cmpfiles(committed, tmp_path, generated, shallow=False)
    assert not mismatch and not errors, f"stubs drifted from protos/: {mismatch + errors}; run scripts/gen-protos"


def test_every_stub_module_ships_type_information():
    committed = ROOT / "sdk" / "v1"
    for module in committed.glob("*_pb2*.py"):
        assert module.with_suffix(".pyi").exists(), f"{module.name} has no .pyi"
    assert (ROOT / "sdk" / "py.typed").exists()
