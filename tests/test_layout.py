"""The shape every service follows: engines speak no gRPC and no protobuf; only servicers (and the HTTP edge) do.

Read from the source with `ast`, not by importing: an import inside a function, or under TYPE_CHECKING, counts.
Every module of the service packages is named below, as an engine or an edge, so a new module is placed
on purpose rather than passing unchecked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICE_PACKAGES = ("services/downloader", "services/encoder", "services/storage")

# Pure logic: frozen dataclasses in and out, raising ferry's errors; what the servicers call.
ENGINE_MODULES = (
    "services/downloader/datauri.py",
    "services/downloader/engine.py",
    "services/downloader/fetch.py",
    "services/downloader/guard.py",
    "services/downloader/headers.py",
    "services/downloader/locks.py",
    "services/downloader/names.py",
    "services/downloader/own_storage.py",
    "services/downloader/paths.py",
    "services/downloader/ranged.py",
    "services/downloader/reads.py",
    "services/downloader/records.py",
    "services/downloader/url_prefix.py",
    "services/downloader/writer.py",
    "services/encoder/audio.py",
    "services/encoder/choices.py",
    "services/encoder/engine.py",
    "services/encoder/file_names.py",
    "services/encoder/image_pipeline.py",
    "services/encoder/images.py",
    "services/encoder/incoming.py",
    "services/encoder/jpeg.py",
    "services/encoder/pipeline.py",
    "services/encoder/request.py",
    "services/encoder/spec.py",
    "services/encoder/streamed_jpeg.py",
    "services/encoder/tensors.py",
    "services/encoder/uploads.py",
    "services/encoder/video.py",
    "services/encoder/video_pipeline.py",
    "services/encoder/wav_pipeline.py",
    # Storage is the encoder's engine below it, and the downloader's source of the stack's own files.
    "services/storage/base.py",
    "services/storage/breaker.py",
    "services/storage/chain.py",
    "services/storage/assembly.py",
    "services/storage/local.py",
    "services/storage/media_types.py",
    "services/storage/ordered_hash.py",
    "services/storage/s3.py",
    "services/storage/sweeper.py",
)

# Where the wire formats live: protobuf ⇄ engine for gRPC, and HTTP for the CDN (which may map statuses).
EDGE_MODULES = (
    "services/downloader/servicer.py",
    "services/encoder/servicer.py",
    "services/storage/cdn.py",
)


def imported_modules(path: Path) -> list[str]:
    """Every module `path` imports, anywhere in it; `from a import b` counts as both a and a.b."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def speaks_the_wire(module: str) -> bool:
    """grpc and its companions (grpc_status, grpc_health…), ferry's generated stubs, or any generated protobuf."""
    top = module.split(".")[0]
    last = module.split(".")[-1]
    return (
        top == "grpc"
        or top.startswith("grpc_")
        or module == "ferry.v1"
        or module.startswith("ferry.v1.")
        or last.endswith(("_pb2", "_pb2_grpc"))
    )


@pytest.mark.parametrize("module", ENGINE_MODULES)
def test_an_engine_module_imports_no_grpc_and_no_generated_protobuf(module: str) -> None:
    wire = [name for name in imported_modules(ROOT / module) if speaks_the_wire(name)]

    assert wire == [], f"{module} imports {wire}: map protobuf in the servicer and hand the engine its own dataclasses"


def test_every_module_of_the_service_packages_is_named_an_engine_or_an_edge() -> None:
    present = {
        str(path.relative_to(ROOT))
        for package in SERVICE_PACKAGES
        for path in (ROOT / package).glob("*.py")
        if path.name != "__init__.py"
    }

    assert present == set(ENGINE_MODULES) | set(EDGE_MODULES)
    assert not set(ENGINE_MODULES) & set(EDGE_MODULES)


def test_the_check_sees_imports_in_every_form(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text(
        "import grpc\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from ferry.v1 import encoder_pb2\n"
        "def later():\n"
        "    import grpc_status.rpc_status\n"
        "    from google.rpc import status_pb2\n"
        "    from ferry import v1\n"
    )

    wire = [name for name in imported_modules(source) if speaks_the_wire(name)]

    assert wire == [
        "grpc",
        "ferry.v1",
        "ferry.v1.encoder_pb2",
        "grpc_status.rpc_status",
        "google.rpc.status_pb2",
        "ferry.v1",
    ]
