"""The launcher wires each hosted service explicitly: two stacks in one process serve independently,
and nothing is handed over through environment variables."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ferry
from ferry.services.config import InferenceConfig, ServerConfig, StackConfig
from ferry.services.launch import Stack

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_APP = str(ROOT / "tests" / "inference" / "sample_app.py") + ":SampleApp"


@pytest.fixture
def two_stacks(tmp_path, background_loop):
    stacks = []
    for name in ("a", "b"):
        server = ServerConfig(grpc_port=0, cdn_port=0, data_dir=tmp_path / name, drain_seconds=1)
        stack = Stack(
            StackConfig(server=server, inference=InferenceConfig(app=(SAMPLE_APP,))),
            ["downloader", "encoder", "inference"],
        )
        background_loop.run(stack.start(), timeout=60)
        stacks.append(stack)
    yield stacks
    for stack in stacks:
        background_loop.run(stack.stop())


def test_two_stacks_in_one_process_each_serve_their_own_apps_and_storage(two_stacks):
    for stack in two_stacks:
        with ferry.Client(f"127.0.0.1:{stack.grpc_port}") as client:
            output = client.run("sample", {"size": 8}, path="/image")
        # The handler's plain Image.from_tensor went to the stack hosting it, and was stored there.
        assert output["image"]["url"].startswith(f"{stack.cdn_url}/files/"), (stack.cdn_url, output)
        assert ferry.Image.model_validate(output["image"]).to_pil().size == (8, 8)
    assert two_stacks[0].cdn_url != two_stacks[1].cdn_url


ENVIRONMENT_CALLS = (
    "os.environ.update",
    "os.environ.setdefault",
    "os.environ.pop",
    "os.environ.clear",
    "os.putenv",
    "os.unsetenv",
)


def environment_writes(tree: ast.AST) -> list[int]:
    """Lines that set, delete or change an environment variable."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = node.targets
        elif isinstance(node, ast.AugAssign):
            targets = [node.target]
        else:
            targets = []
        if any(ast.unparse(target).startswith("os.environ[") for target in targets):
            lines.append(node.lineno)
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ENVIRONMENT_CALLS:
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("package", ["sdk", "services", "inference"])
def test_no_library_code_writes_the_environment(package):
    written = {
        str(path.relative_to(ROOT)): lines
        for path in sorted((ROOT / package).rglob("*.py"))
        if (lines := environment_writes(ast.parse(path.read_text(), str(path))))
    }
    assert written == {}


def test_the_environment_check_sees_each_kind_of_write():
    source = "import os\nos.environ['A'] = '1'\nos.environ.update(B='2')\ndel os.environ['A']\nos.putenv('C', '3')\n"
    assert sorted(environment_writes(ast.parse(source))) == [2, 3, 4, 5]
