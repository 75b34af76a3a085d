"""The image's Dockerfile, checked without Docker (no registry is reachable where the tests run, so the
image is never built here): instructions Docker knows, base images that say which version they are, and
an image that installs ferry and runs `ferry serve` as a non-root user on ferry's default ports."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from ferry.services.config import ServerConfig
from tests.deploy import dockerfile

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def instructions() -> list[dockerfile.Instruction]:
    return dockerfile.read(DOCKERFILE)


@pytest.fixture(scope="module")
def final_stage(instructions) -> list[dockerfile.Instruction]:
    return dockerfile.stages(instructions)[-1].instructions


def _last(stage: list[dockerfile.Instruction], keyword: str) -> dockerfile.Instruction:
    found = [i for i in stage if i.keyword == keyword]
    assert found, f"the final stage has no {keyword}"
    return found[-1]


def test_every_instruction_is_one_docker_knows(instructions):
    unknown = [(i.line, i.keyword) for i in instructions if i.keyword not in dockerfile.INSTRUCTIONS]
    assert not unknown


def test_from_lines_use_only_arguments_declared_before_the_first_from_and_each_of_those_is_used(instructions):
    declared = dockerfile.global_arguments(instructions)
    used = {name for stage in dockerfile.stages(instructions) for name in dockerfile.variables(stage.image)}
    assert used <= set(declared), "an undeclared ARG in FROM is silently empty"
    assert set(declared) <= used, "an ARG before FROM is visible only to FROM lines"


def test_every_base_image_names_its_version_and_none_is_latest(instructions):
    defaults = dockerfile.global_arguments(instructions)
    earlier_stages: set[str] = set()
    for stage in dockerfile.stages(instructions):
        image = dockerfile.substitute(stage.image, defaults)
        if image not in earlier_stages:
            name = image.rsplit("/", 1)[-1]
            assert ":" in name, f"{image}: no tag, so whatever `latest` is that day"
            assert not name.endswith(":latest"), image
        if stage.name:
            earlier_stages.add(stage.name)


def test_the_image_installs_the_torch_the_makefile_pins(instructions):
    makefile_pin = re.search(r"pip install -q (torch==[\w.]+)", (ROOT / "Makefile").read_text())
    assert makefile_pin is not None, "the Makefile no longer pins torch"
    arguments = {
        i.arguments.partition("=")[0]: i.arguments.partition("=")[2] for i in instructions if i.keyword == "ARG"
    }
    assert f"torch=={arguments['TORCH_VERSION']}" == makefile_pin.group(1)
    assert any('"torch==${TORCH_VERSION}"' in i.arguments for i in instructions if i.keyword == "RUN")


def test_the_image_installs_ferry_with_the_extras_its_servers_need_from_every_package_folder(instructions):
    assert any("pip install" in i.arguments and "'.[services,inference,s3]'" in i.arguments for i in instructions)
    copied = {
        source.rstrip("/")
        for i in instructions
        if i.keyword == "COPY" and "--from" not in i.arguments
        for source in i.arguments.split()[:-1]
    }
    assert all((ROOT / source).exists() for source in copied), copied
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_folders = {folder.split("/", 1)[0] for folder in setuptools["package-dir"].values()}
    assert package_folders | {"pyproject.toml", "README.md"} <= copied


def test_the_image_runs_ferry_serve_as_a_non_root_user_on_ferrys_default_ports(final_stage):
    assert _last(final_stage, "ENTRYPOINT").exec_form() == ["ferry"]
    assert _last(final_stage, "CMD").exec_form() == ["serve"]
    user = _last(final_stage, "USER").arguments.split(":")[0]
    assert user.isdigit() and int(user) != 0, "a numeric user lets Kubernetes' runAsNonRoot verify it"
    exposed = {int(port) for i in final_stage if i.keyword == "EXPOSE" for port in i.arguments.split()}
    assert exposed == {ServerConfig.grpc_port, ServerConfig.cdn_port}


def test_the_servers_listen_on_the_containers_address_not_its_loopback(final_stage):
    environment = " ".join(i.arguments for i in final_stage if i.keyword == "ENV")
    assert "FERRY_HOST=0.0.0.0" in environment
