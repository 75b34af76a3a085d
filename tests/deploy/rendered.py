"""The Kubernetes manifests as a cluster receives them: `kubectl kustomize` of an overlay, parsed, plus
what each ferry container would be configured with when it starts.

    rendered = render("gpu")
    deployment = rendered.get("Deployment", "ferry-inference")
    for container in pod_containers(deployment):
        serve = rendered.serve(container)    # its args through `ferry serve`'s own parser and config checks
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

from ferry.inference.app import AppSpec
from ferry.inference.health import health_service_name
from ferry.services import launch
from ferry.services.config import (
    StackConfig,
)

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS_DIR = ROOT / "deploy" / "kubernetes" / "overlays"
OVERLAYS = ("cpu", "gpu")
# The image name the base gives every ferry container; an overlay sets its repository and tag.
FERRY_IMAGE = "ferry"
RENDER_TIMEOUT_SECONDS = 60

Object = dict[str, Any]


def render(overlay: str) -> Rendered:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl is not installed: `make install` installs Debian's kubernetes-client package")
    done = subprocess.run(
        [kubectl, "kustomize", str(OVERLAYS_DIR / overlay)],
        capture_output=True,
        text=True,
        timeout=RENDER_TIMEOUT_SECONDS,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{done.stderr}"
    return Rendered(overlay, [document for document in yaml.safe_load_all(done.stdout) if document])


def image_repository(image: str) -> str:
    """`registry:5000/team/ferry:0.1.0-cpu` → `ferry`."""
    last = image.rsplit("/", 1)[-1]
    return last.split("@", 1)[0].split(":", 1)[0]


def is_ferry(container: Object) -> bool:
    return image_repository(container["image"]) == FERRY_IMAGE


def pod_containers(workload: Object) -> list[Object]:
    """Every container of a workload's pods: sidecars (init containers) first, as the kubelet starts them."""
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


@dataclass(frozen=True)
class ServeInvocation:
    """One container's `ferry serve`: what it hosts and the configuration it starts with."""

    container: str
    services: tuple[str, ...]
    config: StackConfig
    apps: tuple[AppSpec, ...]

    @property
    def health_names(self) -> set[str]:
        """The grpc.health.v1 names the server registers: itself, each hosted service, each hosted app."""
        hosted = {launch.SERVICES[service].full_name for service in self.services}
        return {"", *hosted, *(health_service_name(app.app_id) for app in self.apps)}


@dataclass(frozen=True)
class Rendered:
    overlay: str
    objects: list[Object]

    def of_kind(self, kind: str) -> list[Object]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Object:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        names = [o["metadata"]["name"] for o in self.of_kind(kind)]
        assert len(found) == 1, f"overlays/{self.overlay} renders no single {kind} {name!r} (it has {names})"
        return found[0]

    @property
    def namespace(self) -> str:
        (namespace,) = self.of_kind("Namespace")
        return str(namespace["metadata"]["name"])

    def ferry_containers(self) -> Iterator[tuple[Object, Object]]:
        """(Deployment, container) for every container running the ferry image."""
        for deployment in self.of_kind("Deployment"):
            for container in pod_containers(deployment):
                if is_ferry(container):
                    yield deployment, container

    def config_map(self, name: str) -> dict[str, str]:
        return dict(self.get("ConfigMap", name).get("data", {}))

    def secret(self, name: str) -> dict[str, str]:
        secret = self.get("Secret", name)
        values = {key: base64.b64decode(value).decode() for key, value in secret.get("data", {}).items()}
        values.update(secret.get("stringData", {}))
        return values

    def environment(self, container: Object) -> dict[str, str]:
        """The variables the container starts with; a reference to a key nothing renders fails."""
        environment: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                environment.update(self.config_map(source["configMapRef"]["name"]))
            else:
                environment.update(self.secret(source["secretRef"]["name"]))
        for variable in container.get("env", []):
            if "value" in variable:
                environment[variable["name"]] = str(variable["value"])
                continue
            source = variable["valueFrom"]
            if "secretKeyRef" in source:
                ref, values = source["secretKeyRef"], self.secret(source["secretKeyRef"]["name"])
            else:
                ref, values = source["configMapKeyRef"], self.config_map(source["configMapKeyRef"]["name"])
            assert ref["key"] in values, f"{container['name']}: {variable['name']} names {ref} that has no such key"
            environment[variable["name"]] = values[ref["key"]]
        return environment

    def serve(self, container: Object) -> ServeInvocation:
        """The container's args through `ferry serve`'s own parser, its environment through the same config
        checks and app loading `ferry serve` runs before it starts (launch.main)."""
        name, args = container["name"], container.get("args", [])
        assert args[:1] == ["serve"], f"{name}: expected `ferry serve …`, got {args}"
        try:
            parsed = launch._parser().parse_args(args[1:])
        except SystemExit:
            raise AssertionError(f"{name}: `ferry serve` rejects {args[1:]}") from None
        unknown = set(parsed.services) - set(launch.SERVICES)
        assert not unknown, f"{name}: `ferry serve` hosts no service {sorted(unknown)}"
        services = tuple(parsed.services or launch.SERVICES)
        # Only what the container is given: a FERRY_* variable of this machine must not fill a gap.
        with mock.patch.dict(os.environ, self.environment(container), clear=True):
            try:
                config = launch.config_from_arguments(parsed)
                apps = launch._hosted_apps(config.inference.app) if "inference" in services else []
            except ValueError as error:
                raise AssertionError(f"{name}: ferry serve: {error}") from None
        return ServeInvocation(name, services, config, tuple(apps))
