"""The Kubernetes manifests (deploy/kubernetes/), rendered offline with `kubectl kustomize` the way
`kubectl apply -k` would send them, then held to what a cluster and ferry itself will demand:

- every built-in object validates against the Kubernetes schemas (kubernetes-validate ships them), for the
  oldest Kubernetes the manifests need (1.29: native sidecars) and a recent one;
- KEDA's objects, whose CRD schema is not available offline, carry the fields KEDA's CRD requires;
- every ferry container's args and FERRY_* variables pass `ferry serve`'s own parser, config checks and
  app loading, and its probes ask for health names that server registers;
- the pieces point at each other: Services at pods and ports, the inference replicas at the queue, the
  encoder and their downloader sidecar, the autoscaler at the queue's stream of each hosted app.
"""

from __future__ import annotations

import dataclasses
import inspect
from urllib.parse import urlsplit

import kubernetes_validate
import pytest

from ferry.inference.queue import redis_scripts
from ferry.inference.queue.redis import RedisQueue
from ferry.services.config import (
    DownloaderConfig,
    EncoderConfig,
    InferenceConfig,
    ServerConfig,
    StorageConfig,
    env_name,
)
from tests.deploy import dockerfile
from tests.deploy.rendered import OVERLAYS, ROOT, Object, Rendered, is_ferry, pod_containers, render

# The oldest Kubernetes the manifests need (sidecars as init containers with restartPolicy Always are on
# by default from 1.29) and the newest whose schemas kubernetes-validate>=1.37 ships.
KUBERNETES_VERSIONS = ("1.29", "1.37")
KEDA_API_VERSION = "keda.sh/v1alpha1"
PLACEHOLDER = "REPLACE_ME"
SECRET_WORDS = ("TOKEN", "PASSWORD", "SECRET", "ACCESS_KEY")
GPU = "nvidia.com/gpu"


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> Rendered:
    return render(request.param)


def _custom(o: Object) -> bool:
    return o["apiVersion"].split("/")[0] == KEDA_API_VERSION.split("/")[0]


def _inference(rendered: Rendered) -> Object:
    return rendered.get("Deployment", "ferry-inference")


def _container(workload: Object, name: str) -> Object:
    (found,) = [c for c in pod_containers(workload) if c["name"] == name]
    return found


def _probes(container: Object) -> list[tuple[str, Object]]:
    return [
        (kind, container[kind]) for kind in ("startupProbe", "readinessProbe", "livenessProbe") if kind in container
    ]


def _mounts(workload: Object, container: Object) -> dict[str, Object]:
    """mount path → the pod volume mounted there."""
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}


def _selected(rendered: Rendered, service: Object) -> list[Object]:
    selector = service["spec"]["selector"].items()
    return [
        d for d in rendered.of_kind("Deployment") if selector <= d["spec"]["template"]["metadata"]["labels"].items()
    ]


def _service_at(rendered: Rendered, address: str) -> tuple[Object, int]:
    """The Service a `NAME:PORT` inside the namespace reaches, and that port; both must exist."""
    host, _, port = address.rpartition(":")
    service = rendered.get("Service", host)
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}, f"{address}: the Service has no such port"
    return service, int(port)


# -- what renders, and the schemas -------------------------------------------------------------------


def test_each_overlay_renders_redis_the_three_services_and_the_autoscaler(rendered):
    names = {(o["kind"], o["metadata"]["name"]) for o in rendered.objects}
    for component in ("redis", "encoder", "downloader", "inference"):
        assert ("Deployment", f"ferry-{component}") in names
        assert ("Service", f"ferry-{component}") in names
    assert {("ScaledObject", "ferry-inference"), ("TriggerAuthentication", "ferry-redis")} <= names
    assert all(
        o["metadata"].get("namespace") == rendered.namespace for o in rendered.objects if o["kind"] != "Namespace"
    )


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_built_in_object_validates_against_the_kubernetes_schema(rendered, version):
    for o in rendered.objects:
        if not _custom(o):
            try:
                kubernetes_validate.validate(o, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{o['kind']} {o['metadata']['name']} on Kubernetes {version}: {error.message}")


def test_the_only_custom_resources_are_keda_objects_with_the_fields_kedas_crds_require(rendered):
    custom = [o for o in rendered.objects if _custom(o)]
    assert {(o["apiVersion"], o["kind"]) for o in custom} == {
        (KEDA_API_VERSION, "ScaledObject"),
        (KEDA_API_VERSION, "TriggerAuthentication"),
    }
    for scaled in rendered.of_kind("ScaledObject"):
        spec = scaled["spec"]
        rendered.get("Deployment", spec["scaleTargetRef"]["name"])
        assert isinstance(spec["minReplicaCount"], int) and isinstance(spec["maxReplicaCount"], int)
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert spec["triggers"]
        for trigger in spec["triggers"]:
            assert isinstance(trigger["type"], str)
            # KEDA's CRD: metadata is a map of strings; a YAML number there is rejected by the API server.
            assert all(isinstance(v, str) for v in trigger["metadata"].values()), trigger["metadata"]
            rendered.get("TriggerAuthentication", trigger["authenticationRef"]["name"])
    for authentication in rendered.of_kind("TriggerAuthentication"):
        for ref in authentication["spec"]["secretTargetRef"]:
            assert {"parameter", "name", "key"} <= ref.keys()
            assert ref["key"] in rendered.secret(ref["name"])


# -- ferry's own view of each container -----------------------------------------------------------------


def test_every_ferry_container_runs_flags_and_settings_ferry_serve_accepts(rendered):
    containers = list(rendered.ferry_containers())
    assert len(containers) == 4  # encoder, downloader, and the inference pod's app and downloader sidecar
    for _, container in containers:
        rendered.serve(container)  # fails naming the container and the flag ferry serve refuses


def test_every_ferry_variable_the_manifests_set_is_one_ferry_reads(rendered):
    configs = (ServerConfig, DownloaderConfig, EncoderConfig, StorageConfig, InferenceConfig)
    known = {env_name(f.name) for config in configs for f in dataclasses.fields(config)}
    for _, container in rendered.ferry_containers():
        ferry_variables = {name for name in rendered.environment(container) if name.startswith("FERRY_")}
        assert ferry_variables <= known, f"{container['name']}: {sorted(ferry_variables - known)}"


def test_every_probe_of_a_ferry_container_asks_its_grpc_port_for_a_name_the_server_registers(rendered):
    for _, container in rendered.ferry_containers():
        serve = rendered.serve(container)
        probes = _probes(container)
        assert {"readinessProbe", "livenessProbe"} <= {kind for kind, _ in probes}, container["name"]
        for kind, probe in probes:
            assert probe["grpc"]["port"] == serve.config.server.grpc_port, f"{container['name']} {kind}"
            assert probe["grpc"]["service"] in serve.health_names - {""}, f"{container['name']} {kind}"


def test_inference_containers_wait_for_their_apps_setup_and_leave_the_service_while_the_queue_is_down(rendered):
    container = _container(_inference(rendered), "inference")
    (app,) = rendered.serve(container).apps
    assert container["startupProbe"]["grpc"]["service"] == f"ferry.v1.InferenceService/{app.app_id}"
    # InferenceService is NOT_SERVING while Redis is unreachable: a reason to take no calls, not to restart.
    assert container["readinessProbe"]["grpc"]["service"] == "ferry.v1.InferenceService"
    assert container["livenessProbe"]["grpc"]["service"] != "ferry.v1.InferenceService"


def test_pods_are_given_longer_to_stop_than_ferry_takes_to_drain(rendered):
    for deployment, container in rendered.ferry_containers():
        drain = rendered.serve(container).config.server.drain_seconds
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain


def test_ferry_pods_run_as_the_images_non_root_user(rendered):
    final_stage = dockerfile.stages(dockerfile.read(ROOT / "Dockerfile"))[-1].instructions
    image_user = int([i for i in final_stage if i.keyword == "USER"][-1].arguments.split(":")[0])
    for deployment, container in rendered.ferry_containers():
        security = deployment["spec"]["template"]["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == image_user
        assert security["fsGroup"] == image_user, "volumes must be writable to that user"
        assert container["securityContext"]["allowPrivilegeEscalation"] is False


# -- the inference pod ----------------------------------------------------------------------------------


def test_the_inference_pod_downloads_through_its_own_sidecar_sharing_its_disks_at_the_same_paths(rendered):
    deployment = _inference(rendered)
    app = rendered.serve(_container(deployment, "inference"))
    (sidecar,) = deployment["spec"]["template"]["spec"]["initContainers"]
    downloader = rendered.serve(sidecar)
    assert sidecar["restartPolicy"] == "Always", "a sidecar runs for the pod's life; a plain init container exits"
    assert downloader.services == ("downloader",) and "downloader" not in app.services
    assert app.config.inference.downloader == f"127.0.0.1:{downloader.config.server.grpc_port}"
    # A handler reads the path the downloader answers: the same disk at the same path in both containers.
    app_mounts = _mounts(deployment, _container(deployment, "inference"))
    sidecar_mounts = _mounts(deployment, sidecar)
    for folder in (downloader.config.server.data_dir, downloader.config.downloader.temp_dir):
        assert str(folder) in sidecar_mounts, f"{folder} is not a volume of the downloader"
        assert app_mounts.get(str(folder)) == sidecar_mounts[str(folder)], f"{folder} is not shared"


def test_inference_replicas_share_one_read_write_many_data_dir_and_keep_inputs_on_their_own_disk(rendered):
    deployment = _inference(rendered)
    downloader = rendered.serve(deployment["spec"]["template"]["spec"]["initContainers"][0])
    mounts = _mounts(deployment, _container(deployment, "inference"))
    weights = mounts[str(downloader.config.server.data_dir)]
    claim = rendered.get("PersistentVolumeClaim", weights["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "emptyDir" in mounts[str(downloader.config.downloader.temp_dir)]


def test_inference_replicas_reach_the_redis_queue_and_the_encoder_service(rendered):
    app = rendered.serve(_container(_inference(rendered), "inference"))
    assert "encoder" not in app.services, "handlers' encodes would then stay in the inference pod"
    [encoder_address] = app.config.inference.encoder
    encoder, _ = _service_at(rendered, encoder_address)
    assert [d["metadata"]["name"] for d in _selected(rendered, encoder)] == ["ferry-encoder"]
    queue = urlsplit(app.config.inference.queue)
    assert queue.scheme == "redis" and queue.username is None and queue.password is None, "the password is a Secret"
    redis, _ = _service_at(rendered, queue.netloc)
    assert [d["metadata"]["name"] for d in _selected(rendered, redis)] == ["ferry-redis"]
    assert app.config.inference.queue_password is not None


def test_only_the_gpu_overlay_asks_for_a_gpu_and_only_for_the_inference_container():
    for overlay in OVERLAYS:
        rendered = render(overlay)
        wanting = {
            (deployment["metadata"]["name"], container["name"]): container["resources"]
            for deployment in rendered.of_kind("Deployment")
            for container in pod_containers(deployment)
            if GPU in container["resources"].get("limits", {})
        }
        if overlay == "cpu":
            assert not wanting
            continue
        assert list(wanting) == [("ferry-inference", "inference")]
        resources = wanting["ferry-inference", "inference"]
        assert int(resources["limits"][GPU]) == 1 and resources["requests"][GPU] == resources["limits"][GPU]
        pod = _inference(rendered)["spec"]["template"]["spec"]
        assert any(t["key"] == GPU for t in pod["tolerations"]), "GPU nodes are commonly tainted nvidia.com/gpu"


# -- the queue and the autoscaler -------------------------------------------------------------------


def test_redis_keeps_an_append_only_file_on_a_persistent_volume(rendered):
    deployment = rendered.get("Deployment", "ferry-redis")
    (redis,) = pod_containers(deployment)
    args = redis["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    data = _mounts(deployment, redis)[args[args.index("--dir") + 1]]
    rendered.get("PersistentVolumeClaim", data["persistentVolumeClaim"]["claimName"])
    assert deployment["spec"]["strategy"]["type"] == "Recreate", "two Redis must never share one append-only file"


def test_the_autoscaler_follows_the_queue_stream_of_every_app_the_inference_replicas_host(rendered):
    app = rendered.serve(_container(_inference(rendered), "inference"))
    prefix = inspect.signature(RedisQueue.connect).parameters["key_prefix"].default  # what open_queue uses
    triggers = rendered.get("ScaledObject", "ferry-inference")["spec"]["triggers"]
    keys = (redis_scripts.stream_key, redis_scripts.low_stream_key)  # normal and low priority
    streams = {key(prefix, a.app_id) for a in app.apps for key in keys}
    assert {t["metadata"]["stream"] for t in triggers} == streams
    queue = urlsplit(app.config.inference.queue)
    for trigger in triggers:
        assert trigger["type"] == "redis-streams"
        metadata = trigger["metadata"]
        # KEDA's operator runs in its own namespace: the Service must be named with ours.
        assert metadata["address"] == f"{queue.hostname}.{rendered.namespace}.svc:{queue.port}"
        assert metadata["databaseIndex"] == queue.path.strip("/")


def test_the_autoscaler_counts_queued_and_running_requests_not_the_groups_pending_ones(rendered):
    """With a consumerGroup KEDA counts that group's pending entries: ferry's running requests only, which
    can never exceed what the current replicas run, so a growing queue would never add one."""
    app = rendered.serve(_container(_inference(rendered), "inference"))
    (spec,) = app.apps
    for trigger in rendered.get("ScaledObject", "ferry-inference")["spec"]["triggers"]:
        assert "consumerGroup" not in trigger["metadata"] and redis_scripts.GROUP == "replicas"
        # A replica with every slot busy and nothing waiting is not a reason for another.
        assert int(trigger["metadata"]["streamLength"]) >= spec.max_concurrency


def test_keda_logs_in_to_redis_with_the_password_the_inference_replicas_use(rendered):
    container = _container(_inference(rendered), "inference")
    (source,) = [v["valueFrom"]["secretKeyRef"] for v in container["env"] if v["name"] == "FERRY_QUEUE_PASSWORD"]
    for trigger in rendered.get("ScaledObject", "ferry-inference")["spec"]["triggers"]:
        authentication = rendered.get("TriggerAuthentication", trigger["authenticationRef"]["name"])
        (password,) = [r for r in authentication["spec"]["secretTargetRef"] if r["parameter"] == "password"]
        assert (password["name"], password["key"]) == (source["name"], source["key"])


def test_every_ferry_workload_is_scraped_where_a_container_serves_metrics(rendered):
    """The annotation's port is the CDN's (the encoder) or a container's --metrics-port, and is opened."""
    for deployment in rendered.of_kind("Deployment"):
        if deployment["metadata"]["name"] == "ferry-redis":
            continue
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", deployment["metadata"]["name"]
        assert annotations["prometheus.io/path"] == "/metrics"
        containers = pod_containers(deployment)
        port = int(annotations["prometheus.io/port"])
        assert port in {p["containerPort"] for c in containers for p in c.get("ports", [])}
        served = {
            int(args[i + 1])
            for c in containers
            if (args := c.get("args", []))
            for i, a in enumerate(args)
            if a in ("--metrics-port", "--cdn-port")
        }
        assert port in served | {8787}, "the scraped port is where ferry serves /metrics"


# -- Services -------------------------------------------------------------------------------------------


def test_each_service_selects_the_pods_it_is_named_for_and_targets_ports_they_open(rendered):
    for service in rendered.of_kind("Service"):
        (deployment,) = _selected(rendered, service)
        assert deployment["metadata"]["name"] == service["metadata"]["name"]
        opened = {p.get("name") for c in pod_containers(deployment) for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= opened


def test_services_whose_calls_any_replica_answers_are_headless_and_the_downloaders_is_not(rendered):
    """Headless: DNS names every pod, for clients balancing each call themselves. A download's Read must
    reach the replica whose disk holds the file, so the downloader keeps a virtual IP (one pod per
    connection)."""
    assert rendered.get("Service", "ferry-encoder")["spec"].get("clusterIP") == "None"
    assert rendered.get("Service", "ferry-inference")["spec"].get("clusterIP") == "None"
    assert rendered.get("Service", "ferry-downloader")["spec"].get("clusterIP") != "None"


# -- resources, images, secrets ----------------------------------------------------------------------


def test_every_container_requests_cpu_and_memory_and_has_a_memory_limit(rendered):
    for deployment in rendered.of_kind("Deployment"):
        for container in pod_containers(deployment):
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys(), container["name"]
            assert "memory" in resources["limits"], container["name"]


def test_every_image_names_its_version_and_every_ferry_container_runs_the_same_one(rendered):
    images = [c["image"] for d in rendered.of_kind("Deployment") for c in pod_containers(d)]
    for image in images:
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest", image
    assert len({image for image in images if is_ferry({"image": image})}) == 1


def test_no_secret_holds_a_real_looking_value(rendered):
    for secret in rendered.of_kind("Secret"):
        values = rendered.secret(secret["metadata"]["name"])
        assert values and all(value == PLACEHOLDER for value in values.values()), secret["metadata"]["name"]
    for config_map in rendered.of_kind("ConfigMap"):
        assert not [key for key in config_map.get("data", {}) if any(word in key for word in SECRET_WORDS)]
    for deployment in rendered.of_kind("Deployment"):
        for container in pod_containers(deployment):
            literal = [v["name"] for v in container.get("env", []) if "value" in v]
            assert not [name for name in literal if any(word in name for word in SECRET_WORDS)], container["name"]
