"""Offline checks of the cluster files: launcher configs, KubeRay manifests, image and upload filters.

    .venv/bin/python -m pytest tests/unit/test_cluster_configs.py -q

Nothing here reaches a cloud or a Kubernetes API server. What is checked, and against what:
- cluster/*.yaml (Ray cluster launcher): the JSON schema shipped inside the installed ray package
  (ray/autoscaler/ray-schema.json, draft-07), then Ray's own offline preparation and validation
  (prepare_config: merge with the provider's defaults.yaml, setup-command merging, Docker checks,
  per-type worker bounds; validate_config: the schema again plus head-type and worker-count rules).
  Neither calls the cloud: that happens later in `ray up` (bootstrap_config: IAM, subnets, images).
  node_config is provider-specific and free-form in that schema, so a typo inside it (InstanceTyp)
  only shows at launch; the tests below check the keys the project relies on.
- cluster/kuberay/*.yaml: the openAPIV3Schema of the manifest's kind and version from the KubeRay
  v1.7.0 CRDs, made strict: CRD schemas do not forbid unknown fields (the API server prunes them
  silently), so every object schema with `properties` and no `additionalProperties` /
  `x-kubernetes-preserve-unknown-fields` is treated as closed and a misspelt field fails. CEL rules
  (x-kubernetes-validations) are not evaluated; the few operator-side rules the manifests depend on
  are re-checked by hand.
- Each check is shown to fail on deliberately broken copies (a misspelt field, a wrong type).
"""

from __future__ import annotations

import copy
import json
import re
import zipfile
from functools import lru_cache
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
SCHEMA_DIR = ROOT.parent / "shared" / "schemas" / "kuberay-v1.7.0"
RAY_SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"

LAUNCHER_FILES = sorted(CLUSTER.glob("*.yaml"))
KUBERAY_FILES = sorted((CLUSTER / "kuberay").glob("*.yaml"))
AUTH_SECRET_KEY = "auth_token"  # the data key KubeRay reads from authOptions.secretName
MIN_TOKEN_AUTH_RAY = (2, 52)  # KubeRay refuses authOptions.mode=token below this rayVersion

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path: Path):
    with open(path) as f:
        return yaml.load(f, Loader=Loader)


# --------------------------------------------------------------------------------------------------
# Ray cluster launcher


@lru_cache(maxsize=None)
def ray_schema() -> dict:
    return json.loads(RAY_SCHEMA.read_text())


def check_launcher(config: dict) -> dict:
    """Raise unless ``config`` passes ray-schema.json and Ray's offline prepare/validate; return the
    prepared config."""
    jsonschema.Draft7Validator(ray_schema()).validate(config)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_launcher_files_present():
    assert {p.name for p in LAUNCHER_FILES} >= {"aws.yaml", "gcp.yaml"}


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_config_validates(path):
    config = load_yaml(path)
    prepared = check_launcher(config)
    assert prepared["provider"]["type"] == path.stem  # aws.yaml -> aws, gcp.yaml -> gcp


def _broken_launcher_copies(config: dict):
    gpu_type = next(n for n, t in config["available_node_types"].items() if t["resources"].get("GPU", 0) > 0)

    def edit(fn):
        c = copy.deepcopy(config)
        fn(c)
        return c

    def rename(mapping, old, new):
        mapping[new] = mapping.pop(old)

    # (what is broken, a fragment the error must name, the broken copy)
    yield "misspelt top-level field", "'max_worker' was unexpected", edit(lambda c: rename(c, "max_workers", "max_worker"))
    yield "misspelt node-type field", "'min_worker' was unexpected", edit(
        lambda c: rename(c["available_node_types"][gpu_type], "min_workers", "min_worker"))
    yield "misspelt docker field", "'imag' was unexpected", edit(lambda c: rename(c["docker"], "image", "imag"))
    yield "GPU count as a string", "'8' is not of type 'integer'", edit(
        lambda c: c["available_node_types"][gpu_type]["resources"].update(GPU="8"))
    yield "max_workers as a string", "'12' is not of type 'integer'", edit(lambda c: c.update(max_workers="12"))
    yield "setup_commands not a list", "is not of type 'array'", edit(lambda c: c.update(setup_commands="pip install -e ."))
    yield "node type without resources", "'resources' is a required property", edit(
        lambda c: c["available_node_types"][gpu_type].pop("resources"))
    # Passes the schema; only Ray's validate_config catches it.
    yield "head_node_type not a node type", "`head_node_type` must be one of", edit(
        lambda c: c.update(head_node_type="no_such_type"))


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_check_rejects_broken_copies(path):
    config = load_yaml(path)
    for what, fragment, broken in _broken_launcher_copies(config):
        with pytest.raises((jsonschema.ValidationError, ValueError), match=re.escape(fragment)):
            check_launcher(broken)
            pytest.fail(f"{path.name}: a copy with {what} was accepted")


def check_launcher_properties(config: dict) -> None:
    """Raise AssertionError unless the launcher config has the project's sizing and security shape."""
    prepared = check_launcher(config)
    types = config["available_node_types"]
    head = config["head_node_type"]
    gpu_types = [n for n, t in types.items() if t["resources"].get("GPU", 0) > 0]
    assert gpu_types, "no GPU worker type"
    instance_key = {"aws": "InstanceType", "gcp": "machineType"}[config["provider"]["type"]]
    for name, node_type in types.items():
        # Resources written out for every type, so the autoscaler plans without probing instances.
        assert {"CPU", "GPU", "memory"} <= set(node_type["resources"]), f"{name}: resources not explicit"
        assert "min_workers" in node_type and "max_workers" in node_type, f"{name}: worker bounds not explicit"
        assert instance_key in node_type["node_config"], f"{name}: no {instance_key}"
    for name in gpu_types:
        assert name != head, "GPUs on the head"
        assert types[name]["min_workers"] == 0, f"{name}: GPU nodes must scale from zero"
        assert types[name]["max_workers"] >= 1, f"{name}: can never start"
        assert types[name]["resources"]["GPU"] == 8, f"{name}: not an 8-GPU node"
    assert types[head]["resources"]["GPU"] == 0 and types[head]["max_workers"] == 0
    assert types[head]["resources"]["CPU"] == 0, "the head should not take trials"
    workers_max = sum(t["max_workers"] for n, t in types.items() if n != head)
    assert config["max_workers"] >= workers_max, "global max_workers below the node types' sum"

    assert config.get("docker", {}).get("image"), "no project image"
    # Nothing is installed when a node starts: Ray's provider defaults (pip install boto3 / google
    # api client) must be overridden, and the project comes from the image.
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands", "initialization_commands"):
        assert not any("pip install" in cmd for cmd in prepared[key]), f"{key} installs at node start"
    # Token authentication on every node; the dashboard only on the head's loopback (SSH tunnel).
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(prepared[key])
        assert "RAY_AUTH_MODE=token" in start, f"{key}: no token auth"
        assert "RAY_AUTH_TOKEN_PATH=" in start, f"{key}: token path not set"
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start, "dashboard exposed"
    # The token's directory is mounted, and the project sources mounted over the image's exist here.
    token_dir = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)/auth_token", head_start).group(1)
    assert token_dir in config["file_mounts"], "auth token not mounted"
    for remote, local in config["file_mounts"].items():
        if remote.startswith("/home/ray/overopt/"):
            assert (ROOT / local).is_dir(), f"file_mounts source {local} missing"


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_sizing_and_security(path):
    check_launcher_properties(load_yaml(path))


def _launcher_property_violations(config: dict):
    head = config["head_node_type"]
    gpu_type = next(n for n, t in config["available_node_types"].items() if t["resources"].get("GPU", 0) > 0)

    def edit(fn):
        c = copy.deepcopy(config)
        fn(c)
        return c

    yield "GPU nodes must scale from zero", edit(lambda c: c["available_node_types"][gpu_type].update(min_workers=1))
    yield "resources not explicit", edit(lambda c: c["available_node_types"][gpu_type]["resources"].pop("memory"))
    yield "the head should not take trials", edit(lambda c: c["available_node_types"][head]["resources"].update(CPU=16))
    yield "setup_commands installs", edit(lambda c: c.update(setup_commands=["pip install -e '/home/ray/overopt[vllm]'"]))
    yield "head_setup_commands installs", edit(lambda c: c.pop("head_setup_commands"))  # Ray's default: pip install
    yield "no token auth", edit(lambda c: c.update(worker_start_ray_commands=["ray start --address=$RAY_HEAD_IP:6379"]))
    yield "dashboard exposed", edit(lambda c: c.update(head_start_ray_commands=[
        cmd.replace("127.0.0.1", "0.0.0.0") for cmd in c["head_start_ray_commands"]]))
    yield "auth token not mounted", edit(lambda c: c.update(file_mounts={
        k: v for k, v in c["file_mounts"].items() if "overopt/" in k}))


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_property_check_can_fail(path):
    for fragment, broken in _launcher_property_violations(load_yaml(path)):
        with pytest.raises(AssertionError, match=re.escape(fragment)):
            check_launcher_properties(broken)
            pytest.fail(f"{path.name}: a copy violating '{fragment}' was accepted")


# --------------------------------------------------------------------------------------------------
# KubeRay manifests


def close_objects(schema):
    """In place: every object schema listing `properties` and saying nothing about extra fields is
    closed (additionalProperties: false), recursively through the schema positions."""
    if isinstance(schema, list):
        for s in schema:
            close_objects(s)
        return schema
    if not isinstance(schema, dict):
        return schema
    if "properties" in schema:
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        for sub in schema["properties"].values():
            close_objects(sub)
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            close_objects(schema[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            close_objects(schema[key])
    return schema


# The top-level metadata is `type: object` in every CRD (the API server checks ObjectMeta itself);
# these are the fields a manifest of this project may set.
OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


@lru_cache(maxsize=None)
def crds() -> dict:
    """(group, kind) -> CRD, for the CRDs in SCHEMA_DIR."""
    found = {}
    for path in sorted(SCHEMA_DIR.glob("*.yaml")):
        crd = load_yaml(path)
        if isinstance(crd, dict) and crd.get("kind") == "CustomResourceDefinition":
            found[(crd["spec"]["group"], crd["spec"]["names"]["kind"])] = crd
    return found


@lru_cache(maxsize=None)
def _schema_json(api_version: str, kind: str, strict: bool) -> str:
    group, _, version = api_version.partition("/")
    crd = crds()[(group, kind)]
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = copy.deepcopy(served["schema"]["openAPIV3Schema"])
    if strict:
        close_objects(schema)
        schema["properties"]["metadata"] = OBJECT_META
        schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
        schema["properties"]["apiVersion"] = {"const": api_version}
        schema["properties"]["kind"] = {"const": kind}
        schema["properties"].pop("status", None)  # written by the operator, never by a manifest
    return json.dumps(schema)


@lru_cache(maxsize=None)
def _validator(api_version: str, kind: str, strict: bool) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads(_schema_json(api_version, kind, strict)))


def kuberay_validator(manifest: dict, strict: bool = True) -> jsonschema.Draft7Validator:
    return _validator(manifest["apiVersion"], manifest["kind"], strict)


def check_manifest(manifest: dict) -> None:
    """Raise jsonschema.ValidationError (the most relevant error) unless the manifest fits the
    strict schema of its kind and version."""
    group, _, version = str(manifest.get("apiVersion", "")).partition("/")
    crd = crds().get((group, manifest.get("kind")))
    if crd is None or version not in {v["name"] for v in crd["spec"]["versions"]}:
        raise jsonschema.ValidationError(f"no CRD defines {manifest.get('apiVersion')} {manifest.get('kind')}")
    validator = kuberay_validator(manifest)
    error = jsonschema.exceptions.best_match(validator.iter_errors(manifest))
    if error is not None:  # the path and the message, without jsonschema's dump of the (huge) sub-schema
        where = ".".join(str(p) for p in error.absolute_path) or "<root>"
        raise jsonschema.ValidationError(f"{manifest['kind']} {where}: {error.message}")


@pytest.fixture(scope="module")
def kuberay_schemas():
    if not SCHEMA_DIR.is_dir():
        pytest.skip(f"KubeRay v1.7.0 CRDs not found at {SCHEMA_DIR} (shared schemas not present in this checkout)")
    assert {("ray.io", "RayCluster"), ("ray.io", "RayJob")} <= set(crds())


@pytest.fixture(scope="module")
def manifests(kuberay_schemas):
    return {p.name: load_yaml(p) for p in KUBERAY_FILES}


def test_kuberay_files_present():
    assert {p.name for p in KUBERAY_FILES} >= {"raycluster.yaml", "rayjob.yaml"}


@pytest.mark.parametrize("name", [p.name for p in KUBERAY_FILES])
def test_kuberay_manifest_validates(manifests, name):
    manifest = manifests[name]
    assert manifest["apiVersion"] == "ray.io/v1"
    check_manifest(manifest)


def _broken_manifest_copies(manifest: dict):
    spec_key = "rayClusterSpec" if manifest["kind"] == "RayJob" else None

    def cluster(m):
        return m["spec"][spec_key] if spec_key else m["spec"]

    def edit(fn):
        m = copy.deepcopy(manifest)
        fn(m)
        return m

    def rename(mapping, old, new):
        mapping[new] = mapping.pop(old)

    def gpu_container(m):
        return gpu_groups(cluster(m))[0]["template"]["spec"]["containers"][0]

    # (what is broken, a fragment the error must name, the broken copy)
    yield "misspelt spec field", "'enableInTreeAutoscalling' was unexpected", edit(
        lambda m: rename(cluster(m), "enableInTreeAutoscaling", "enableInTreeAutoscalling"))
    yield "misspelt container field", "'resource' was unexpected", edit(lambda m: rename(gpu_container(m), "resources", "resource"))
    yield "misspelt securityContext field", "'allowPrivilegeEscalaton' was unexpected", edit(
        lambda m: rename(gpu_container(m)["securityContext"], "allowPrivilegeEscalation", "allowPrivilegeEscalaton"))
    yield "misspelt metadata field", "'nmae' was unexpected", edit(lambda m: rename(m["metadata"], "name", "nmae"))
    yield "minReplicas as a string", "'0' is not of type 'integer'", edit(lambda m: gpu_groups(cluster(m))[0].update(minReplicas="0"))
    yield "enableInTreeAutoscaling as a string", "'true' is not of type 'boolean'", edit(
        lambda m: cluster(m).update(enableInTreeAutoscaling="true"))
    yield "unknown auth mode", "'tokens' is not one of", edit(lambda m: cluster(m)["authOptions"].update(mode="tokens"))
    yield "malformed memory quantity", "'lots' does not match", edit(
        lambda m: gpu_container(m)["resources"]["limits"].update(memory="lots"))
    yield "misspelt kind", "no CRD defines", edit(lambda m: m.update(kind=m["kind"] + "s"))
    if manifest["kind"] == "RayJob":
        yield "misspelt RayJob field", "'entrypiont' was unexpected", edit(lambda m: rename(m["spec"], "entrypoint", "entrypiont"))
        yield "shutdownAfterJobFinishes as a string", "'yes' is not of type 'boolean'", edit(
            lambda m: m["spec"].update(shutdownAfterJobFinishes="yes"))
        yield "ttlSecondsAfterFinished as a string", "'600' is not of type 'integer'", edit(
            lambda m: m["spec"].update(ttlSecondsAfterFinished="600"))


@pytest.mark.parametrize("name", [p.name for p in KUBERAY_FILES])
def test_kuberay_check_rejects_broken_copies(manifests, name):
    manifest = manifests[name]
    for what, fragment, broken in _broken_manifest_copies(manifest):
        with pytest.raises(jsonschema.ValidationError, match=re.escape(fragment)):
            check_manifest(broken)
            pytest.fail(f"{name}: a copy with {what} was accepted")


def test_crd_schema_alone_accepts_misspelt_fields(manifests):
    """Why the check is strict: the CRD's own schema lets a misspelt field through (the API server
    would prune it silently and, e.g., leave autoscaling off)."""
    manifest = copy.deepcopy(manifests["raycluster.yaml"])
    manifest["spec"]["enableInTreeAutoscalling"] = manifest["spec"].pop("enableInTreeAutoscaling")
    assert not list(kuberay_validator(manifest, strict=False).iter_errors(manifest))
    with pytest.raises(jsonschema.ValidationError, match="enableInTreeAutoscalling"):
        check_manifest(manifest)


# ----- security and sizing properties


def cluster_spec(manifest: dict) -> dict:
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


def gpu_groups(spec: dict) -> list[dict]:
    return [g for g in spec["workerGroupSpecs"]
            if any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in g["template"]["spec"]["containers"])]


def pod_specs(manifest: dict) -> dict[str, dict]:
    """Every pod template of the manifest, by a readable name."""
    spec = cluster_spec(manifest)
    pods = {"head": spec["headGroupSpec"]["template"]["spec"]}
    for group in spec["workerGroupSpecs"]:
        pods[f"worker group {group['groupName']}"] = group["template"]["spec"]
    if manifest["kind"] == "RayJob":
        pods["submitter"] = manifest["spec"]["submitterPodTemplate"]["spec"]
    return pods


def containers(pod: dict) -> list[dict]:
    return pod["containers"] + pod.get("initContainers", [])


def assert_restricted(where: str, security: dict | None) -> None:
    assert security, f"{where}: no securityContext"
    assert security.get("runAsNonRoot") is True, f"{where}: runAsNonRoot not set"
    assert security.get("runAsUser", 1000) != 0, f"{where}: runs as root"
    assert security.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation allowed"
    assert "ALL" in security.get("capabilities", {}).get("drop", []), f"{where}: capabilities not dropped"
    assert not security.get("privileged"), f"{where}: privileged"


def assert_sized(where: str, resources: dict | None) -> None:
    assert resources, f"{where}: no resources"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{where}: {kind} lack cpu/memory"


def check_kuberay_properties(manifest: dict) -> None:
    """Raise AssertionError unless the manifest has the project's security and scaling shape."""
    spec = cluster_spec(manifest)
    kind = manifest["kind"]
    # Non-root, no escalation, no capabilities, requests and limits: every pod and container,
    # including the autoscaler sidecar KubeRay adds to the head pod (configured by autoscalerOptions).
    for pod_name, pod in pod_specs(manifest).items():
        pod_security = pod.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True and pod_security.get("runAsUser") == 1000, f"{pod_name}: pod may run as root"
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), f"{pod_name}: host namespaces"
        for container in containers(pod):
            where = f"{kind} {pod_name} {container['name']}"
            # Container level too: KubeRay copies the Ray container's securityContext into the
            # wait-gcs-ready init container it injects into worker pods.
            assert_restricted(where, container.get("securityContext"))
            assert_sized(where, container.get("resources"))
            assert not any("hostPort" in port for port in container.get("ports", [])), f"{where}: hostPort"
    assert_restricted(f"{kind} autoscaler", spec.get("autoscalerOptions", {}).get("securityContext"))
    assert_sized(f"{kind} autoscaler", spec.get("autoscalerOptions", {}).get("resources"))

    # Token authentication: KubeRay's authOptions, and the same Secret in every container's env.
    auth = spec.get("authOptions", {})
    assert auth.get("mode") == "token" and auth.get("secretName"), "authOptions: token mode with our Secret"
    version = tuple(int(x) for x in spec["rayVersion"].split(".")[:2])
    assert version >= MIN_TOKEN_AUTH_RAY, "rayVersion too old for token auth"
    assert version == tuple(int(x) for x in ray.__version__.split(".")[:2]), "rayVersion != the project's Ray"
    for pod_name, pod in pod_specs(manifest).items():
        for container in pod["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            where = f"{kind} {pod_name} {container['name']}"
            assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: RAY_AUTH_MODE"
            token = env.get("RAY_AUTH_TOKEN", {})
            assert "value" not in token, f"{where}: literal token in the manifest"
            ref = token.get("valueFrom", {}).get("secretKeyRef", {})
            assert ref.get("name") == auth["secretName"] and ref.get("key") == AUTH_SECRET_KEY, f"{where}: token not from the auth Secret"
            assert not ref.get("optional"), f"{where}: token Secret optional"

    # Autoscaling GPU workers from zero.
    assert spec.get("enableInTreeAutoscaling") is True, "autoscaling off"
    groups = gpu_groups(spec)
    assert groups, "no GPU worker group"
    for group in groups:
        name = group["groupName"]
        assert group.get("minReplicas") == 0 and group.get("replicas", 0) == 0, f"{name}: GPU pods must scale from zero"
        assert group.get("maxReplicas", 0) >= 1, f"{name}: can never start"
        for container in group["template"]["spec"]["containers"]:
            res = container["resources"]
            assert res.get("requests", {}).get("nvidia.com/gpu") == res["limits"]["nvidia.com/gpu"] == "8", f"{name}: not 8 GPUs"
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group.get("minReplicas", 0) <= group.get("maxReplicas", 0), f"{group['groupName']}: min > max"
        # KubeRay refuses a group setting Ray resources both ways
        assert not (group.get("resources") and {"num-cpus", "num-gpus", "memory", "resources"} & set(group["rayStartParams"]))

    # The dashboard stays inside the cluster.
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", "head Service exposed outside the cluster"
    assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP", "head Service exposed outside the cluster"
    assert not head.get("enableIngress"), "dashboard exposed through an Ingress"
    assert head.get("rayStartParams", {}).get("num-cpus") == "0", "the head should not take trials"
    images = {c["image"] for pod in pod_specs(manifest).values() for c in pod["containers"]}
    assert len(images) == 1, f"different images: {images}"


@pytest.mark.parametrize("name", [p.name for p in KUBERAY_FILES])
def test_kuberay_security_and_scaling(manifests, name):
    check_kuberay_properties(manifests[name])


def _kuberay_property_violations(manifest: dict):
    def edit(fn):
        m = copy.deepcopy(manifest)
        fn(m)
        return m

    def gpu_group(m):
        return gpu_groups(cluster_spec(m))[0]

    def gpu_container(m):
        return gpu_group(m)["template"]["spec"]["containers"][0]

    def head_container(m):
        return cluster_spec(m)["headGroupSpec"]["template"]["spec"]["containers"][0]

    yield "pod may run as root", edit(lambda m: gpu_group(m)["template"]["spec"]["securityContext"].update(runAsNonRoot=False))
    yield "privilege escalation allowed", edit(lambda m: gpu_container(m)["securityContext"].pop("allowPrivilegeEscalation"))
    yield "capabilities not dropped", edit(lambda m: gpu_container(m)["securityContext"].update(capabilities={"add": ["SYS_ADMIN"]}))
    yield "limits lack cpu/memory", edit(lambda m: head_container(m)["resources"].pop("limits"))
    yield "autoscaler: no securityContext", edit(lambda m: cluster_spec(m)["autoscalerOptions"].pop("securityContext"))
    yield "RAY_AUTH_MODE", edit(lambda m: gpu_container(m).update(env=[e for e in gpu_container(m)["env"] if e["name"] != "RAY_AUTH_MODE"]))
    yield "literal token in the manifest", edit(lambda m: head_container(m).update(env=[
        {"name": "RAY_AUTH_MODE", "value": "token"}, {"name": "RAY_AUTH_TOKEN", "value": "hunter2"}]))
    yield "authOptions: token mode", edit(lambda m: cluster_spec(m).pop("authOptions"))
    yield "autoscaling off", edit(lambda m: cluster_spec(m).update(enableInTreeAutoscaling=False))
    yield "GPU pods must scale from zero", edit(lambda m: gpu_group(m).update(minReplicas=1))
    yield "head Service exposed outside the cluster", edit(lambda m: cluster_spec(m)["headGroupSpec"].update(serviceType="LoadBalancer"))
    yield "dashboard exposed through an Ingress", edit(lambda m: cluster_spec(m)["headGroupSpec"].update(enableIngress=True))
    if manifest["kind"] == "RayJob":
        yield "RayJob submitter ray-job-submitter: no securityContext", edit(
            lambda m: m["spec"]["submitterPodTemplate"]["spec"]["containers"][0].pop("securityContext"))


@pytest.mark.parametrize("name", [p.name for p in KUBERAY_FILES])
def test_kuberay_property_check_can_fail(manifests, name):
    for fragment, broken in _kuberay_property_violations(manifests[name]):
        with pytest.raises(AssertionError, match=re.escape(fragment)):
            check_kuberay_properties(broken)
            pytest.fail(f"{name}: a copy violating '{fragment}' was accepted")


def test_rayjob_runs_the_sweep_and_cleans_up(manifests):
    job = manifests["rayjob.yaml"]["spec"]
    assert job["entrypoint"] == (
        "python jobs/scale_sweep.py --config configs/pythia_tldr.yaml --set storage=s3://YOUR-BUCKET/overopt")
    script, config = job["entrypoint"].split()[1], job["entrypoint"].split()[3]
    assert (ROOT / script).is_file()
    assert config == "configs/pythia_tldr.yaml"
    runtime_env = yaml.safe_load(job["runtimeEnvYAML"])
    assert isinstance(runtime_env, dict) and runtime_env.get("working_dir")
    assert job["shutdownAfterJobFinishes"] is True
    assert job["ttlSecondsAfterFinished"] > 0  # KubeRay: a TTL needs shutdownAfterJobFinishes
    assert job.get("submissionMode", "K8sJobMode") == "K8sJobMode"  # SidecarMode takes no submitterPodTemplate
    assert job["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"
    # The job's cluster is the long-lived cluster's spec, so the two cannot drift apart.
    assert job["rayClusterSpec"] == manifests["raycluster.yaml"]["spec"]


# --------------------------------------------------------------------------------------------------
# Image and upload filters

RAYIGNORE_MUST = [".venv/", "runs/", "results/", "checkpoints/", "ray_results/", ".torch_extensions/", ".git/",
                  "__pycache__/", ".pytest_cache/", "*.parquet", "*.safetensors"]


def _package(directory: Path, out: Path) -> zipfile.ZipFile:
    """Zip ``directory`` with Ray's own working_dir packaging, honouring only its .rayignore (no
    .gitignore, none of Ray's default excludes): what the file alone keeps out."""
    from ray._private.runtime_env.packaging import create_package

    create_package(str(directory), out, include_gitignore=False, excludes=[])
    return zipfile.ZipFile(out)


def test_rayignore_is_honoured_by_ray_packaging(tmp_path):
    work = tmp_path / "repo"
    keep = ["platform/overopt/config.py", "jobs/scale_sweep.py", "configs/pythia_tldr.yaml", "pyproject.toml"]
    drop = [".venv/bin/python", "runs/exp/results.parquet", "results/a.txt", "checkpoints/c/model.safetensors",
            "ray_results/t/x.json", ".torch_extensions/op.so", ".git/HEAD", "platform/overopt/__pycache__/a.pyc",
            ".pytest_cache/v", "data/pairs.parquet", "model.safetensors"]
    for rel in keep + drop:
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text("x")
    (work / ".rayignore").write_text((ROOT / ".rayignore").read_text())
    names = set(_package(work, tmp_path / "pkg.zip").namelist())
    assert set(keep) <= names
    assert not names & set(drop), sorted(names & set(drop))


def test_rayignore_lists_and_repo_upload_size(tmp_path):
    lines = {line.strip() for line in (ROOT / ".rayignore").read_text().splitlines()}
    assert set(RAYIGNORE_MUST) <= lines
    package = tmp_path / "repo.zip"
    names = _package(ROOT, package).namelist()
    top = {n.split("/")[0] for n in names}
    assert {"platform", "jobs", "configs", "pyproject.toml"} <= top
    assert not top & {".venv", ".git", "runs", "results", "checkpoints", "ray_results", ".torch_extensions"}
    assert not [n for n in names if n.endswith((".parquet", ".safetensors")) or "__pycache__" in n]
    # Ray refuses packages over its GCS limit (~512 MiB); the code alone is well under 10 MiB.
    assert package.stat().st_size < 10 * 2**20, f"working_dir upload is {package.stat().st_size} bytes"


def test_dockerignore_keeps_local_state_out():
    lines = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv/", ".git/", "runs/", ".torch_extensions/"} <= lines


def test_dockerfile():
    text = (CLUSTER / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    instructions = [line.split(None, 1) for line in joined.splitlines() if line.strip()]
    assert all(op.isupper() for op, *_ in instructions), [op for op, *_ in instructions]
    base = re.search(r"^ARG RAY_IMAGE=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(rf"rayproject/ray:{re.escape(ray.__version__)}-py3\d+-(gpu|cu\d+)", base), base
    users = [args.strip() for op, *rest in instructions if op == "USER" for args in rest]
    assert users and users[-1] == "ray", "the image must end as its non-root ray user"
    assert re.search(r'pip install -e "\.\[vllm\]"', text), "project not installed with its vLLM extra"
    assert not any(op in ("ENTRYPOINT", "CMD") for op, *_ in instructions), "nothing may run at container start"
