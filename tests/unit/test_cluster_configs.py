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
  v1.7.0 CRDs (vendored in tests/fixtures/kuberay-v1.7.0/, Apache-2.0, see its README.md), made
  strict: CRD schemas do not forbid unknown fields (the API server prunes them silently), so every
  object schema with `properties` and no `additionalProperties` / `x-kubernetes-preserve-unknown-fields`
  is treated as closed and a misspelt field fails. CEL rules (x-kubernetes-validations) are not
  evaluated; the operator-side rules the manifests depend on (KubeRay v1.7.0's
  ray-operator/controllers/ray/utils/validation.go: autoscaler v2, idle timeouts, deadlines, deletion)
  are re-checked by hand.
- What a GPU cluster needs to accept the files on the first try: NVIDIA driver >= 580 (the CUDA 13
  wheels of torch 2.13 / vLLM 0.32), the same storage identity on every node, disk for staged
  checkpoints, no GPU for CPU-only pods, bounded RayJobs.
- Sizing comments against configs/pythia_tldr.yaml, and every documented `jobs/*.py` command and
  `--set` key against the scripts and the config model.
- Each check is shown to fail on deliberately broken copies (a misspelt field, a wrong type).
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import zipfile
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
SCHEMA_DIR = ROOT / "tests" / "fixtures" / "kuberay-v1.7.0"  # vendored: no checkout outside the repository needed
RAY_SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"

# The cloud launcher files; cluster/local-autoscaling.yaml (Ray's fake multi-node provider on one machine) is
# checked on its own below and run by tests/integration/test_autoscaling.py.
LOCAL_AUTOSCALING = CLUSTER / "local-autoscaling.yaml"
LAUNCHER_FILES = sorted(p for p in CLUSTER.glob("*.yaml") if p != LOCAL_AUTOSCALING)
KUBERAY_FILES = sorted((CLUSTER / "kuberay").glob("*.yaml"))
AUTH_SECRET_KEY = "auth_token"  # the data key KubeRay reads from authOptions.secretName
MIN_TOKEN_AUTH_RAY = (2, 52)  # KubeRay refuses authOptions.mode=token below this rayVersion

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path: Path):
    with open(path) as f:
        return yaml.load(f, Loader=Loader)


# --------------------------------------------------------------------------------------------------
# Ray cluster launcher


@cache
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
    yield (
        "misspelt node-type field",
        "'min_worker' was unexpected",
        edit(lambda c: rename(c["available_node_types"][gpu_type], "min_workers", "min_worker")),
    )
    yield "misspelt docker field", "'imag' was unexpected", edit(lambda c: rename(c["docker"], "image", "imag"))
    yield (
        "GPU count as a string",
        "'8' is not of type 'integer'",
        edit(lambda c: c["available_node_types"][gpu_type]["resources"].update(GPU="8")),
    )
    yield "max_workers as a string", "'12' is not of type 'integer'", edit(lambda c: c.update(max_workers="12"))
    yield "setup_commands not a list", "is not of type 'array'", edit(lambda c: c.update(setup_commands="pip install -e ."))
    yield (
        "node type without resources",
        "'resources' is a required property",
        edit(lambda c: c["available_node_types"][gpu_type].pop("resources")),
    )
    # Passes the schema; only Ray's validate_config catches it.
    yield "head_node_type not a node type", "`head_node_type` must be one of", edit(lambda c: c.update(head_node_type="no_such_type"))


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_check_rejects_broken_copies(path):
    config = load_yaml(path)
    for what, fragment, broken in _broken_launcher_copies(config):
        with pytest.raises((jsonschema.ValidationError, ValueError), match=re.escape(fragment)):
            check_launcher(broken)
            pytest.fail(f"{path.name}: a copy with {what} was accepted")


def test_the_local_autoscaling_config_passes_rays_schema_and_matches_its_command():
    """Ray's schema (its offline prepare_config needs an example file the fake provider's wheel lacks;
    the autoscaler that reads the file at `ray start` is exercised by the integration test)."""
    config = load_yaml(LOCAL_AUTOSCALING)
    jsonschema.Draft7Validator(ray_schema()).validate(config)
    assert config["provider"]["type"] == "fake_multinode"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0} and head["max_workers"] == 0, "the head runs no trials"
    assert "--num-cpus=0" in LOCAL_AUTOSCALING.read_text(), "the header's `ray start` must match the head's resources"
    (worker,) = [t for name, t in types.items() if name != config["head_node_type"]]
    assert worker["min_workers"] == 0 and worker["max_workers"] == config["max_workers"] >= 1
    from overopt.config import load_config
    from overopt.trial_plan import resources_per_trial

    one_trial = resources_per_trial(load_config(ROOT / "configs" / "smoke.yaml"))["CPU"]
    assert worker["resources"]["CPU"] == one_trial, f"a worker node holds one smoke trial ({one_trial} CPUs)"


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
    yield (
        "dashboard exposed",
        edit(lambda c: c.update(head_start_ray_commands=[cmd.replace("127.0.0.1", "0.0.0.0") for cmd in c["head_start_ray_commands"]])),
    )
    yield "auth token not mounted", edit(lambda c: c.update(file_mounts={k: v for k, v in c["file_mounts"].items() if "overopt/" in k}))


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


@cache
def crds() -> dict:
    """(group, kind) -> CRD, for the CRDs in SCHEMA_DIR."""
    found = {}
    for path in sorted(SCHEMA_DIR.glob("*.yaml")):
        crd = load_yaml(path)
        if isinstance(crd, dict) and crd.get("kind") == "CustomResourceDefinition":
            found[(crd["spec"]["group"], crd["spec"]["names"]["kind"])] = crd
    return found


@cache
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


@cache
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
    assert SCHEMA_DIR.is_dir(), f"vendored KubeRay CRDs missing: {SCHEMA_DIR}"
    assert {("ray.io", "RayCluster"), ("ray.io", "RayJob")} <= set(crds())


def test_vendored_crds_are_only_what_the_manifests_use():
    """The fixture holds the two CRDs the manifests need, with their provenance and licence, and stays small."""
    files = {p.name for p in SCHEMA_DIR.iterdir()}
    assert files == {"ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml", "LICENSE", "README.md"}, files
    assert sum(p.stat().st_size for p in SCHEMA_DIR.iterdir()) < 4 * 2**20
    readme = (SCHEMA_DIR / "README.md").read_text()
    assert "ray-project/kuberay" in readme and "v1.7.0" in readme and "ray-operator/config/crd/bases" in readme
    assert "Apache License, Version 2.0" in readme
    licence = (SCHEMA_DIR / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence and "END OF TERMS AND CONDITIONS" in licence
    kinds = {crd["spec"]["names"]["kind"] for crd in crds().values()}
    assert kinds == {"RayCluster", "RayJob"}
    used = {(load_yaml(p)["apiVersion"].split("/")[0], load_yaml(p)["kind"]) for p in KUBERAY_FILES}
    assert used == set(crds())


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
    yield (
        "misspelt spec field",
        "'enableInTreeAutoscalling' was unexpected",
        edit(lambda m: rename(cluster(m), "enableInTreeAutoscaling", "enableInTreeAutoscalling")),
    )
    yield "misspelt container field", "'resource' was unexpected", edit(lambda m: rename(gpu_container(m), "resources", "resource"))
    yield (
        "misspelt securityContext field",
        "'allowPrivilegeEscalaton' was unexpected",
        edit(lambda m: rename(gpu_container(m)["securityContext"], "allowPrivilegeEscalation", "allowPrivilegeEscalaton")),
    )
    yield "misspelt metadata field", "'nmae' was unexpected", edit(lambda m: rename(m["metadata"], "name", "nmae"))
    yield "minReplicas as a string", "'0' is not of type 'integer'", edit(lambda m: gpu_groups(cluster(m))[0].update(minReplicas="0"))
    yield (
        "enableInTreeAutoscaling as a string",
        "'true' is not of type 'boolean'",
        edit(lambda m: cluster(m).update(enableInTreeAutoscaling="true")),
    )
    yield "unknown auth mode", "'tokens' is not one of", edit(lambda m: cluster(m)["authOptions"].update(mode="tokens"))
    yield (
        "malformed memory quantity",
        "'lots' does not match",
        edit(lambda m: gpu_container(m)["resources"]["limits"].update(memory="lots")),
    )
    yield "misspelt kind", "no CRD defines", edit(lambda m: m.update(kind=m["kind"] + "s"))
    if manifest["kind"] == "RayJob":
        yield "misspelt RayJob field", "'entrypiont' was unexpected", edit(lambda m: rename(m["spec"], "entrypoint", "entrypiont"))
        yield (
            "shutdownAfterJobFinishes as a string",
            "'yes' is not of type 'boolean'",
            edit(lambda m: m["spec"].update(shutdownAfterJobFinishes="yes")),
        )
        yield (
            "ttlSecondsAfterFinished as a string",
            "'600' is not of type 'integer'",
            edit(lambda m: m["spec"].update(ttlSecondsAfterFinished="600")),
        )


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
    return [
        g
        for g in spec["workerGroupSpecs"]
        if any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in g["template"]["spec"]["containers"])
    ]


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
    yield (
        "literal token in the manifest",
        edit(
            lambda m: head_container(m).update(
                env=[{"name": "RAY_AUTH_MODE", "value": "token"}, {"name": "RAY_AUTH_TOKEN", "value": "hunter2"}]
            )
        ),
    )
    yield "authOptions: token mode", edit(lambda m: cluster_spec(m).pop("authOptions"))
    yield "autoscaling off", edit(lambda m: cluster_spec(m).update(enableInTreeAutoscaling=False))
    yield "GPU pods must scale from zero", edit(lambda m: gpu_group(m).update(minReplicas=1))
    yield "head Service exposed outside the cluster", edit(lambda m: cluster_spec(m)["headGroupSpec"].update(serviceType="LoadBalancer"))
    yield "dashboard exposed through an Ingress", edit(lambda m: cluster_spec(m)["headGroupSpec"].update(enableIngress=True))
    if manifest["kind"] == "RayJob":
        yield (
            "RayJob submitter ray-job-submitter: no securityContext",
            edit(lambda m: m["spec"]["submitterPodTemplate"]["spec"]["containers"][0].pop("securityContext")),
        )


@pytest.mark.parametrize("name", [p.name for p in KUBERAY_FILES])
def test_kuberay_property_check_can_fail(manifests, name):
    for fragment, broken in _kuberay_property_violations(manifests[name]):
        with pytest.raises(AssertionError, match=re.escape(fragment)):
            check_kuberay_properties(broken)
            pytest.fail(f"{name}: a copy violating '{fragment}' was accepted")


def test_rayjob_runs_the_sweep_and_cleans_up(manifests):
    job = manifests["rayjob.yaml"]["spec"]
    assert job["entrypoint"] == ("python jobs/scale_sweep.py --config configs/pythia_tldr.yaml --set storage=s3://YOUR-BUCKET/overopt")
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

RAYIGNORE_MUST = [
    ".venv/",
    "runs/",
    "results/",
    "checkpoints/",
    "ray_results/",
    ".torch_extensions/",
    ".git/",
    "__pycache__/",
    ".pytest_cache/",
    "*.parquet",
    "*.safetensors",
]


def _package(directory: Path, out: Path) -> zipfile.ZipFile:
    """Zip ``directory`` with Ray's own working_dir packaging, honouring only its .rayignore (no
    .gitignore, none of Ray's default excludes): what the file alone keeps out."""
    from ray._private.runtime_env.packaging import create_package

    create_package(str(directory), out, include_gitignore=False, excludes=[])
    return zipfile.ZipFile(out)


def test_rayignore_is_honoured_by_ray_packaging(tmp_path):
    work = tmp_path / "repo"
    keep = ["platform/overopt/config.py", "jobs/scale_sweep.py", "configs/pythia_tldr.yaml", "pyproject.toml"]
    drop = [
        ".venv/bin/python",
        "runs/exp/results.parquet",
        "results/a.txt",
        "checkpoints/c/model.safetensors",
        "ray_results/t/x.json",
        ".torch_extensions/op.so",
        ".git/HEAD",
        "platform/overopt/__pycache__/a.pyc",
        ".pytest_cache/v",
        "data/pairs.parquet",
        "model.safetensors",
    ]
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


def test_dockerfile_states_the_driver_requirement():
    """torch 2.13.0 / vLLM 0.32.0 from PyPI are CUDA 13 builds: the image says so, checks it at build
    time, and makes the NVIDIA container runtime refuse a node whose driver is older than 580."""
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(r"^ARG MIN_NVIDIA_DRIVER=(\d+)$", text, re.M).group(1) == str(MIN_NVIDIA_DRIVER)
    assert re.search(r"^ARG CUDA_MAJOR=(\d+)$", text, re.M).group(1) == str(CUDA_MAJOR)
    assert 'ai.overopt.min-nvidia-driver="${MIN_NVIDIA_DRIVER}"' in text and 'ai.overopt.cuda-major="${CUDA_MAJOR}"' in text
    assert 'NVIDIA_REQUIRE_CUDA="cuda>=${CUDA_MAJOR}.0"' in text
    assert "torch.version.cuda" in text, "no build-time check of torch's CUDA major version"
    assert re.search(r"driver >= 580", text), "the driver requirement is not stated"
    base = re.search(r"^ARG RAY_IMAGE=(\S+)$", text, re.M).group(1)
    assert not old_cuda(base), f"base image {base} is a CUDA {old_cuda(base)} build"


# --------------------------------------------------------------------------------------------------
# What a GPU cluster needs: driver >= 580, the same storage identity everywhere, disk, bounded jobs

MIN_NVIDIA_DRIVER = 580  # the driver branch CUDA 13 needs
CUDA_MAJOR = 13  # the PyPI wheels of torch 2.13.0 and vLLM 0.32.0
DRIVER_CHECK = re.compile(r"nvidia-smi --query-gpu=driver_version.*?-ge (\d+)", re.S)
OBJECT_STORE_SHARE, OBJECT_STORE_CAP = 0.3, 200 * 10**9  # Ray's default object store: 30% of memory, at most 200 GB


def cuda_majors(name: str) -> list[int]:
    """The CUDA major versions an image name states: cu128 -> 12, cu130 -> 13, cuda12.8 / cuda-12 -> 12."""
    majors = []
    for match in re.finditer(r"(?i)(?<![a-z])cu(da)?[-_]?(\d+(?:\.\d+)?)", name):
        digits = match.group(2)
        if match.group(1) or "." in digits:
            majors.append(int(digits.split(".")[0]))
        else:  # cuXYZ: all digits but the last are the major version
            majors.append(int(digits[:-1]) if len(digits) >= 3 else int(digits))
    return majors


def old_cuda(name: str) -> int | None:
    """The CUDA major version below CUDA_MAJOR that an image name states, or None."""
    return next((m for m in cuda_majors(name) if m < CUDA_MAJOR), None)


def driver_branches(name: str) -> list[int]:
    """NVIDIA driver branches an image name states (common-cu129-ubuntu-2404-nvidia-580 -> [580])."""
    return [int(m) for m in re.findall(r"(?i)(?:nvidia|driver)[-_]?(\d{3})(?!\d)", name)]


def quantity(value) -> float:
    """A Kubernetes quantity (200Gi, 500m, 32G, 8) in base units."""
    match = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P|m)?", str(value))
    assert match, f"not a quantity: {value!r}"
    scale = {
        None: 1,
        "m": 1e-3,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "P": 1e15,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "Pi": 2**50,
    }[match.group(2)]
    return float(match.group(1)) * scale


# ----- sizes: configs/pythia_tldr.yaml is what the GPU node types are sized for

# Parameter counts of the config's sizes (overopt.model_shapes.model_shape counts them from the hub's
# config.json; the hub is not reachable offline). Largest layer: the embedding (vocabulary x hidden size).
PYTHIA_PARAMS = {"EleutherAI/pythia-1b": 1_011_781_632, "EleutherAI/pythia-2.8b": 2_775_208_960, "EleutherAI/pythia-6.9b": 6_857_302_016}
PYTHIA_LARGEST_LAYER = {"EleutherAI/pythia-1b": 103_022_592, "EleutherAI/pythia-2.8b": 128_778_240, "EleutherAI/pythia-6.9b": 206_569_472}


@cache
def pythia_config():
    from overopt.config import load_config

    cfg = load_config(ROOT / "configs" / "pythia_tldr.yaml")
    assert set(cfg.models.sizes) <= set(PYTHIA_PARAMS), f"add the parameter counts of {cfg.models.sizes}"
    return cfg


def pythia_trial() -> dict[str, float]:
    from overopt.trial_plan import resources_per_trial

    return resources_per_trial(pythia_config())


def largest_model_states_gib() -> float:
    """Model states per training GPU at the config's largest size (what the dry run prints)."""
    from overopt.model_shapes import ModelShape
    from overopt.worker_memory import GIB, estimate_worker_memory

    cfg = pythia_config()
    size = max(cfg.models.sizes, key=PYTHIA_PARAMS.get)
    shape = ModelShape(total_params=PYTHIA_PARAMS[size], largest_layer_params=PYTHIA_LARGEST_LAYER[size])
    t = cfg.train
    plan = estimate_worker_memory(
        shape,
        num_workers=t.num_workers,
        zero_stage=t.zero_stage,
        precision=t.precision,
        optimizer=t.optimizer,
        reference=cfg.reference.mode,
    )
    return plan.total / GIB


def checkpoint_staging_bytes() -> int:
    """What a GPU pod (one trial) may hold on its local disk at once at the largest size, the
    derivation written in cluster/kuberay/raycluster.yaml: one engine checkpoint of all ranks before
    Ray uploads it (training-dtype weights + every rank's optimizer state), the consolidated checkpoint
    handed to evaluation, a local copy of it per scoring task and vLLM engine of each evaluation in
    flight, and the node's caches of the SFT references and of the Hugging Face downloads (all sizes)."""
    from overopt.model_shapes import ModelShape
    from overopt.trial_plan import evaluation_slots, vllm_engines
    from overopt.worker_memory import estimate_worker_memory

    cfg = pythia_config()
    size = max(cfg.models.sizes, key=PYTHIA_PARAMS.get)
    P, t, ev = PYTHIA_PARAMS[size], cfg.train, cfg.evaluation
    dtype = {"bf16": 2, "fp32": 4}[t.precision]
    plan = estimate_worker_memory(
        ModelShape(P, PYTHIA_LARGEST_LAYER[size]),
        num_workers=t.num_workers,
        zero_stage=t.zero_stage,
        precision=t.precision,
        optimizer=t.optimizer,
    )
    engine = P * dtype + plan.optimizer_state * t.num_workers
    handover = P * dtype
    copies = evaluation_slots(ev) * (ev.tasks + (1 if vllm_engines(ev) else 0)) * P * dtype
    caches = 2 * sum(PYTHIA_PARAMS[s] for s in cfg.models.sizes) * 2  # references + hub downloads, 16-bit
    return engine + handover + copies + caches


# ----- launcher


def node_images(config: dict) -> dict[str, str]:
    """Node type -> the VM image it boots (AWS ImageId; GCP boot disk sourceImage)."""
    images = {}
    for name, node_type in config["available_node_types"].items():
        node_config = node_type["node_config"]
        if config["provider"]["type"] == "aws":
            images[name] = str(node_config.get("ImageId", ""))
        else:
            boot = [d for d in node_config.get("disks", []) if d.get("boot")]
            images[name] = str(boot[0].get("initializeParams", {}).get("sourceImage", "")) if boot else ""
    return images


def launcher_container_images(config: dict) -> list[str]:
    docker = [config.get("docker", {})] + [t.get("docker", {}) for t in config["available_node_types"].values()]
    return [d[k] for d in docker for k in ("image", "head_image", "worker_image") if d.get(k)]


def check_launcher_gpu_cluster(config: dict) -> None:
    """Raise AssertionError unless the launcher config fits the CUDA 13 image (driver >= 580 on the
    GPU nodes, checked before Docker starts) and gives every node the head's storage identity."""
    provider = config["provider"]["type"]
    types, head = config["available_node_types"], config["head_node_type"]
    gpu_types = [n for n, t in types.items() if t["resources"].get("GPU", 0) > 0]
    for image in launcher_container_images(config):
        assert not old_cuda(image), f"container image {image} is a CUDA {old_cuda(image)} build"
    # VM images: the driver is what counts (every CUDA library comes from the container; the host's
    # toolkit, e.g. cu129 in a Deep Learning VM family's name, is unused).
    for name, image in node_images(config).items():
        low = [b for b in driver_branches(image) if b < MIN_NVIDIA_DRIVER]
        assert not low, f"{name}: VM image {image} has NVIDIA driver {low[0]} < {MIN_NVIDIA_DRIVER}"
        if provider == "gcp":
            assert driver_branches(image), f"{name}: VM image {image!r} names no NVIDIA driver branch"
        else:
            assert (
                image.startswith("resolve:ssm:/aws/service/deeplearning/ami/")
                and "nvidia-driver" in image
                or re.fullmatch(r"ami-[0-9a-f]{8,17}", image)
            ), f"{name}: ImageId {image!r} is neither a Deep Learning AMI parameter nor an AMI id"
    global_init = config.get("initialization_commands", [])
    for name in gpu_types:
        commands = types[name].get("initialization_commands", global_init)
        check = DRIVER_CHECK.search("\n".join(commands))
        assert check and int(check.group(1)) == MIN_NVIDIA_DRIVER, f"{name}: no NVIDIA driver check before Docker starts"
        # A node type's list replaces the global one: a registry login there must not be lost.
        assert all(cmd in commands for cmd in global_init), f"{name}: its initialization_commands drop the global ones"
        if provider == "gcp":
            items = {i["key"]: i["value"] for i in types[name]["node_config"].get("metadata", {}).get("items", [])}
            assert items.get("install-nvidia-driver") == "True", f"{name}: the Deep Learning VM may boot without its driver"
    # Storage: trials write the bucket from the workers, so every node has the head's identity.
    key = {"aws": "IamInstanceProfile", "gcp": "serviceAccounts"}[provider]
    identity = types[head]["node_config"].get(key)
    assert identity, f"head: no {key}"
    for name, node_type in types.items():
        assert node_type["node_config"].get(key) == identity, f"{name}: {key} differs from the head's"
    if provider == "gcp":
        for account in identity:
            assert account["email"].endswith(f"@{config['provider']['project_id']}.iam.gserviceaccount.com"), (
                f"service account {account['email']} is not of project {config['provider']['project_id']}"
            )
            assert "https://www.googleapis.com/auth/cloud-platform" in account["scopes"], "service account scopes exclude storage"


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_gpu_cluster(path):
    config = load_yaml(path)
    check_launcher_gpu_cluster(config)
    check_launcher(config)  # still valid for Ray with the per-type initialization_commands


def _launcher_gpu_violations(config: dict):
    head = config["head_node_type"]
    gpu_type = next(n for n, t in config["available_node_types"].items() if t["resources"].get("GPU", 0) > 0)
    key = {"aws": "IamInstanceProfile", "gcp": "serviceAccounts"}[config["provider"]["type"]]

    def edit(fn):
        c = copy.deepcopy(config)
        fn(c)
        return c

    def set_image(c, image):
        node_config = c["available_node_types"][head]["node_config"]
        if c["provider"]["type"] == "aws":
            node_config["ImageId"] = image
        else:
            node_config["disks"][0]["initializeParams"] = dict(node_config["disks"][0]["initializeParams"], sourceImage=image)

    old_family = (
        "projects/deeplearning-platform-release/global/images/family/common-cu128-ubuntu-2204-nvidia-570"
        if config["provider"]["type"] == "gcp"
        else "resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-570-gpu-ubuntu-22.04/latest/ami-id"
    )
    yield "has NVIDIA driver 570 < 580", edit(lambda c: set_image(c, old_family))
    yield "is a CUDA 12 build", edit(lambda c: c["docker"].update(image="rayproject/ray:2.60.0-py311-cu128"))
    yield f"{gpu_type}: no NVIDIA driver check", edit(lambda c: c["available_node_types"][gpu_type].pop("initialization_commands"))
    yield "drop the global ones", edit(lambda c: c.update(initialization_commands=["docker login YOUR-REGISTRY"]))
    yield f"{gpu_type}: {key} differs from the head's", edit(lambda c: c["available_node_types"][gpu_type]["node_config"].pop(key))
    yield f"head: no {key}", edit(lambda c: c["available_node_types"][head]["node_config"].pop(key))
    if config["provider"]["type"] == "gcp":
        yield "is not of project", edit(lambda c: c["provider"].update(project_id="another-project"))
        yield "may boot without its driver", edit(lambda c: c["available_node_types"][gpu_type]["node_config"].pop("metadata"))
    else:
        yield "neither a Deep Learning AMI parameter nor an AMI id", edit(lambda c: set_image(c, "YOUR-AMI-ID"))


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_gpu_cluster_check_can_fail(path):
    for fragment, broken in _launcher_gpu_violations(load_yaml(path)):
        with pytest.raises(AssertionError, match=re.escape(fragment)):
            check_launcher_gpu_cluster(broken)
            pytest.fail(f"{path.name}: a copy violating '{fragment}' was accepted")


# ----- KubeRay


def object_store_bytes(ray_start_params: dict, container: dict) -> float:
    if "object-store-memory" in ray_start_params:
        return float(ray_start_params["object-store-memory"])
    return min(OBJECT_STORE_SHARE * quantity(container["resources"]["limits"]["memory"]), OBJECT_STORE_CAP)


def check_kuberay_gpu_cluster(manifest: dict) -> None:
    """Raise AssertionError unless the manifest is what a GPU Kubernetes cluster accepts and runs as
    meant: CPU-only pods see no GPU, /dev/shm fits the object store, GPU pods have disk for staged
    checkpoints, autoscaler v2 with per-group idle timeouts, one storage ServiceAccount, and (RayJob)
    deadlines and a deletion rule that KubeRay v1.7.0 accepts."""
    spec, kind = cluster_spec(manifest), manifest["kind"]
    head = spec["headGroupSpec"]
    groups = {"head": head, **{f"worker group {g['groupName']}": g for g in spec["workerGroupSpecs"]}}
    gpu_names = {f"worker group {g['groupName']}" for g in gpu_groups(spec)}

    # CPU-only pods run the GPU image: NVIDIA_VISIBLE_DEVICES=void keeps the node's GPUs away from them
    # (a runtime defaulting to nvidia would expose them all), num-gpus "0" keeps Ray from advertising any.
    for pod_name, pod in pod_specs(manifest).items():
        for container in pod["containers"]:
            where = f"{kind} {pod_name} {container['name']}"
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            if "nvidia.com/gpu" in container["resources"].get("limits", {}):
                assert "NVIDIA_VISIBLE_DEVICES" not in env, f"{where}: NVIDIA_VISIBLE_DEVICES overrides the device plugin"
            else:
                assert env.get("NVIDIA_VISIBLE_DEVICES") == "void", f"{where}: a CPU-only container may see the node's GPUs"
    autoscaler_env = {e["name"]: e.get("value") for e in spec.get("autoscalerOptions", {}).get("env", [])}
    assert autoscaler_env.get("NVIDIA_VISIBLE_DEVICES") == "void", f"{kind} autoscaler: a CPU-only container may see the node's GPUs"
    for name, group in groups.items():
        if name not in gpu_names:
            assert group.get("rayStartParams", {}).get("num-gpus") == "0", f"{kind} {name}: Ray may advertise the node's GPUs"

    # /dev/shm: KubeRay mounts its own, sized to the container's memory. One of ours must hold the
    # object store, or Ray moves the store to disk.
    for name, group in groups.items():
        pod = group["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            for mount in container.get("volumeMounts", []):
                if mount["mountPath"].rstrip("/") != "/dev/shm":
                    continue
                empty_dir = volumes.get(mount["name"], {}).get("emptyDir")
                assert empty_dir is not None and empty_dir.get("medium") == "Memory", f"{kind} {name}: /dev/shm not in memory"
                if "sizeLimit" in empty_dir:
                    need = object_store_bytes(group.get("rayStartParams", {}), container)
                    assert quantity(empty_dir["sizeLimit"]) >= need, (
                        f"{kind} {name}: /dev/shm ({empty_dir['sizeLimit']}) smaller than the object store ({need / 2**30:.0f} GiB)"
                    )

    # GPU pods stage checkpoints on their local disk before Ray uploads them.
    need = checkpoint_staging_bytes()
    for group in gpu_groups(spec):
        for container in group["template"]["spec"]["containers"]:
            requests, limits = container["resources"].get("requests", {}), container["resources"].get("limits", {})
            where = f"{kind} worker group {group['groupName']}"
            assert "ephemeral-storage" in requests and "ephemeral-storage" in limits, f"{where}: no ephemeral-storage request and limit"
            assert quantity(requests["ephemeral-storage"]) >= need and quantity(limits["ephemeral-storage"]) >= quantity(
                requests["ephemeral-storage"]
            ), f"{where}: ephemeral-storage below the checkpoint staging ({need / 2**30:.0f} GiB)"

    # Autoscaler v2 the KubeRay 1.4+ way, with an idle timeout per group (v2 only, KubeRay refuses
    # them otherwise); the env var next to autoscalerOptions.version is refused, and so is a pod
    # restartPolicy other than Never.
    assert spec.get("autoscalerOptions", {}).get("version") == "v2", f"{kind}: autoscaler v1"
    head_env = {e["name"] for e in head["template"]["spec"]["containers"][0].get("env", [])}
    assert "RAY_enable_autoscaler_v2" not in head_env, f"{kind}: RAY_enable_autoscaler_v2 next to autoscalerOptions.version"
    for name, group in groups.items():
        assert group["template"]["spec"].get("restartPolicy", "Never") == "Never", f"{kind} {name}: restartPolicy with autoscaler v2"
        if name != "head":
            timeout = group.get("idleTimeoutSeconds")
            assert isinstance(timeout, int) and timeout >= 0, f"{kind} {name}: no idle timeout of its own"

    # Storage: the driver (head) and the trials (workers) write the bucket as the same ServiceAccount.
    account = head["template"]["spec"].get("serviceAccountName")
    assert account, f"{kind} head: no serviceAccountName"
    assert head["template"]["spec"].get("automountServiceAccountToken", True), f"{kind} head: the autoscaler needs the ServiceAccount token"
    for name, group in groups.items():
        assert group["template"]["spec"].get("serviceAccountName") == account, f"{kind} {name}: serviceAccountName differs from the head's"

    if kind == "RayJob":
        job = manifest["spec"]
        active, pre_running = job.get("activeDeadlineSeconds"), job.get("preRunningDeadlineSeconds")
        assert isinstance(active, int) and active > 0, "RayJob: no activeDeadlineSeconds"
        assert isinstance(pre_running, int) and 0 < pre_running < active, "RayJob: no preRunningDeadlineSeconds"
        # KubeRay v1.7.0's validateDeletionConfiguration, and a rule that deletes the cluster at all.
        shutdown, ttl = job.get("shutdownAfterJobFinishes", False), job.get("ttlSecondsAfterFinished", 0)
        strategy = job.get("deletionStrategy") or {}
        rules = strategy.get("deletionRules") or []
        assert not (ttl > 0 and not shutdown), "RayJob: ttlSecondsAfterFinished without shutdownAfterJobFinishes"
        assert not (rules and shutdown), "RayJob: deletionRules and shutdownAfterJobFinishes together"
        assert not any(r["policy"] == "DeleteWorkers" for r in rules), "RayJob: DeleteWorkers with autoscaling"
        legacy = {strategy.get(k, {}).get("policy") for k in ("onSuccess", "onFailure")}
        deletes = (
            shutdown
            or any(r["policy"] in ("DeleteCluster", "DeleteSelf") for r in rules)
            or (bool(strategy) and not rules and legacy <= {"DeleteCluster", "DeleteSelf"})
        )
        assert deletes, "RayJob: its cluster is never deleted"


@pytest.mark.parametrize("name", [p.name for p in KUBERAY_FILES])
def test_kuberay_gpu_cluster(manifests, name):
    check_kuberay_gpu_cluster(manifests[name])


def _kuberay_gpu_violations(manifest: dict):
    def edit(fn):
        m = copy.deepcopy(manifest)
        fn(m)
        return m

    def head_pod(m):
        return cluster_spec(m)["headGroupSpec"]["template"]["spec"]

    def gpu_group(m):
        return gpu_groups(cluster_spec(m))[0]

    def cpu_group(m):
        return next(g for g in cluster_spec(m)["workerGroupSpecs"] if g not in gpu_groups(cluster_spec(m)))

    def drop_env(container, name):
        container["env"] = [e for e in container["env"] if e["name"] != name]

    def add_dshm(m, size):  # the 8Gi /dev/shm the head once had: below its object store (30% of 32Gi)
        pod = head_pod(m)
        pod.setdefault("volumes", []).append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": size}})
        pod["containers"][0].setdefault("volumeMounts", []).append({"name": "dshm", "mountPath": "/dev/shm"})

    def set_ephemeral(m, value):
        resources = gpu_group(m)["template"]["spec"]["containers"][0]["resources"]
        resources["requests"]["ephemeral-storage"] = resources["limits"]["ephemeral-storage"] = value

    yield (
        "head ray-head: a CPU-only container may see the node's GPUs",
        edit(lambda m: drop_env(head_pod(m)["containers"][0], "NVIDIA_VISIBLE_DEVICES")),
    )
    yield (
        "ray-worker: a CPU-only container may see the node's GPUs",
        edit(lambda m: drop_env(cpu_group(m)["template"]["spec"]["containers"][0], "NVIDIA_VISIBLE_DEVICES")),
    )
    yield (
        "overrides the device plugin",
        edit(
            lambda m: gpu_group(m)["template"]["spec"]["containers"][0]["env"].append({"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"})
        ),
    )
    yield "head: Ray may advertise the node's GPUs", edit(lambda m: cluster_spec(m)["headGroupSpec"]["rayStartParams"].pop("num-gpus"))
    yield "smaller than the object store", edit(lambda m: add_dshm(m, "8Gi"))
    yield (
        "no ephemeral-storage request and limit",
        edit(lambda m: gpu_group(m)["template"]["spec"]["containers"][0]["resources"]["requests"].pop("ephemeral-storage")),
    )
    yield "ephemeral-storage below the checkpoint staging", edit(lambda m: set_ephemeral(m, "100Gi"))
    yield "autoscaler v1", edit(lambda m: cluster_spec(m)["autoscalerOptions"].pop("version"))
    yield (
        "RAY_enable_autoscaler_v2 next to",
        edit(lambda m: head_pod(m)["containers"][0]["env"].append({"name": "RAY_enable_autoscaler_v2", "value": "1"})),
    )
    yield "restartPolicy with autoscaler v2", edit(lambda m: gpu_group(m)["template"]["spec"].update(restartPolicy="Always"))
    yield "no idle timeout of its own", edit(lambda m: gpu_group(m).pop("idleTimeoutSeconds"))
    yield "head: no serviceAccountName", edit(lambda m: head_pod(m).pop("serviceAccountName"))
    yield "serviceAccountName differs from the head's", edit(lambda m: gpu_group(m)["template"]["spec"].pop("serviceAccountName"))
    yield "the autoscaler needs the ServiceAccount token", edit(lambda m: head_pod(m).update(automountServiceAccountToken=False))
    if manifest["kind"] == "RayJob":
        yield "no activeDeadlineSeconds", edit(lambda m: m["spec"].pop("activeDeadlineSeconds"))
        yield "no preRunningDeadlineSeconds", edit(lambda m: m["spec"].pop("preRunningDeadlineSeconds"))
        yield (
            "deletionRules and shutdownAfterJobFinishes together",
            edit(
                lambda m: m["spec"].update(
                    deletionStrategy={
                        "deletionRules": [{"condition": {"jobStatus": "FAILED", "ttlSeconds": 600}, "policy": "DeleteCluster"}]
                    }
                )
            ),
        )
        yield "ttlSecondsAfterFinished without shutdownAfterJobFinishes", edit(lambda m: m["spec"].update(shutdownAfterJobFinishes=False))
        yield "its cluster is never deleted", edit(lambda m: m["spec"].update(shutdownAfterJobFinishes=False, ttlSecondsAfterFinished=0))


@pytest.mark.parametrize("name", [p.name for p in KUBERAY_FILES])
def test_kuberay_gpu_cluster_check_can_fail(manifests, name):
    for fragment, broken in _kuberay_gpu_violations(manifests[name]):
        with pytest.raises(AssertionError, match=re.escape(fragment)):
            check_kuberay_gpu_cluster(broken)
            pytest.fail(f"{name}: a copy violating '{fragment}' was accepted")


def test_kuberay_gpu_fields_exist_in_the_crds(manifests):
    """The fields the checks above rely on are in KubeRay v1.7.0's schema (strict validation would fail
    otherwise, but say which): per-group idle timeouts, autoscaler version, RayJob deadlines."""
    spec_schema = json.loads(_schema_json("ray.io/v1", "RayCluster", False))["properties"]["spec"]
    assert "idleTimeoutSeconds" in spec_schema["properties"]["workerGroupSpecs"]["items"]["properties"]
    assert spec_schema["properties"]["autoscalerOptions"]["properties"]["version"]["enum"] == ["v1", "v2"]
    job_schema = json.loads(_schema_json("ray.io/v1", "RayJob", False))["properties"]["spec"]["properties"]
    assert {"activeDeadlineSeconds", "preRunningDeadlineSeconds", "deletionStrategy", "ttlSecondsAfterFinished"} <= set(job_schema)
    assert job_schema["preRunningDeadlineSeconds"].get("minimum") == 1


def test_no_image_names_cuda_12_or_a_driver_below_580(manifests):
    """Across every cluster file: container images are not CUDA 12 builds, VM images carry no driver
    branch below 580 (the checks above, gathered in one place)."""
    images = [re.search(r"^ARG RAY_IMAGE=(\S+)$", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)]
    for path in LAUNCHER_FILES:
        config = load_yaml(path)
        images += launcher_container_images(config)
        for vm_image in node_images(config).values():
            assert all(b >= MIN_NVIDIA_DRIVER for b in driver_branches(vm_image)), vm_image
    for manifest in manifests.values():
        images += [c["image"] for pod in pod_specs(manifest).values() for c in pod["containers"]]
    assert images and not [i for i in images if old_cuda(i)], [i for i in images if old_cuda(i)]
    assert old_cuda("rayproject/ray:2.60.0-py311-cu128") == 12 and old_cuda("nvidia/cuda:12.8.0-runtime") is None
    assert old_cuda("rayproject/ray:2.60.0-py311-cu130") is None and driver_branches("common-cu128-ubuntu-2204-nvidia-570") == [570]


# ----- sizing against configs/pythia_tldr.yaml


def test_gpu_nodes_fit_the_trials_of_the_config(manifests):
    """Every GPU node type / group holds whole trials of configs/pythia_tldr.yaml, its SFT stage, and
    scales to exactly its trials at once."""
    cfg, trial = pythia_config(), pythia_trial()
    sft_threads = cfg.sft.num_workers * cfg.sft.cpus_per_worker

    def check(where, gpus, cpus, max_nodes):
        per_node = int(gpus // trial["GPU"])
        assert per_node >= 1, f"{where}: {gpus} GPUs hold no trial ({trial['GPU']:g} GPUs per trial)"
        assert cpus >= per_node * trial["CPU"], f"{where}: {cpus} CPUs for {per_node} trials of {trial['CPU']:g}"
        assert gpus >= cfg.sft.num_workers and cpus >= sft_threads, f"{where}: the SFT stage does not fit one node"
        assert max_nodes * per_node == cfg.sweep.max_concurrent_trials, (
            f"{where}: {max_nodes} nodes for {cfg.sweep.max_concurrent_trials} trials"
        )

    for path in LAUNCHER_FILES:
        for name, node_type in load_yaml(path)["available_node_types"].items():
            if node_type["resources"].get("GPU", 0):
                check(f"{path.name} {name}", node_type["resources"]["GPU"], node_type["resources"]["CPU"], node_type["max_workers"])
    for name, manifest in manifests.items():
        for group in gpu_groups(cluster_spec(manifest)):
            limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
            check(f"{name} {group['groupName']}", quantity(limits["nvidia.com/gpu"]), quantity(limits["cpu"]), group["maxReplicas"])


CLUSTER_TEXT_FILES = LAUNCHER_FILES + KUBERAY_FILES + [CLUSTER / "Dockerfile", CLUSTER / "README.md"]
# Phrases of the old sizing (8 Train workers per trial, ~14 GB per GPU, "64 CPUs" of SFT, output_dir).
STALE_SIZING = ["GPU workers per trial", "~14 GB", "= 64 CPUs", "8 x 8 CPUs", "output_dir"]


def sizing_claims() -> dict[str, tuple[re.Pattern, float]]:
    """What a sizing comment may say, and the value configs/pythia_tldr.yaml gives it."""
    from overopt.trial_plan import evaluation_slots, vllm_engines

    cfg, trial = pythia_config(), pythia_trial()
    ev = cfg.evaluation
    return {
        "Train workers": (re.compile(r"(\d+) (?:Ray )?Train workers"), cfg.train.num_workers),
        "SFT workers": (re.compile(r"(\d+) SFT workers"), cfg.sft.num_workers),
        "SFT threads": (re.compile(r"sft\.cpus_per_worker\s*=\s*(\d+)"), cfg.sft.cpus_per_worker),
        "GPUs per trial": (re.compile(r"(\d+) GPUs per trial|trial holds (\d+) GPUs"), trial["GPU"]),
        "CPUs per trial": (re.compile(r"(\d+) CPUs per trial|reserves (\d+) CPUs|\) and (\d+) CPUs"), trial["CPU"]),
        "trials at once": (re.compile(r"(\d+) trials at once"), cfg.sweep.max_concurrent_trials),
        "scoring tasks": (re.compile(r"(\d+) scoring tasks"), ev.tasks * evaluation_slots(ev)),
        "vLLM engines": (re.compile(r"(\d+) vLLM engines"), vllm_engines(ev)),
        "GiB per GPU": (re.compile(r"~(\d+(?:\.\d+)?) GiB per GPU"), largest_model_states_gib()),
    }


def test_sizing_comments_match_the_config():
    """Every sizing figure written in cluster/ is configs/pythia_tldr.yaml's (model states within 5%)."""
    found = dict.fromkeys(sizing_claims(), 0)
    for path in CLUSTER_TEXT_FILES:
        text = re.sub(r"\s*\n\s*#?\s*", " ", path.read_text())  # comments wrap across lines
        for stale in STALE_SIZING:
            assert stale not in text, f"{path.name}: stale sizing {stale!r}"
        for what, (pattern, expected) in sizing_claims().items():
            for match in pattern.finditer(text):
                value = float(next(g for g in match.groups() if g))
                found[what] += 1
                tolerance = 0.05 * expected if what == "GiB per GPU" else 0
                assert abs(value - expected) <= tolerance, (
                    f"{path.name}: {match.group(0)!r}, but configs/pythia_tldr.yaml gives {expected:g}"
                )
    assert all(found.values()), f"sizing never stated: {[w for w, n in found.items() if not n]}"


# ----- documented commands

DOC_FILES = [CLUSTER / "README.md", ROOT / "docs" / "clusters.md"]


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) for every command line naming a jobs/*.py script: in the code blocks of the
    Markdown files, anywhere in the cluster files (comments, the RayJob's entrypoint); lines ending
    in a backslash are joined."""
    found = []
    sources = [(p, "\n".join(re.findall(r"^```[^\n]*\n(.*?)^```", p.read_text(), re.S | re.M))) for p in DOC_FILES]
    sources += [(p, p.read_text()) for p in LAUNCHER_FILES + KUBERAY_FILES + [CLUSTER / "Dockerfile"]]
    for path, text in sources:
        lines = [re.sub(r"^\s*#?\s?", "", line) if path.suffix != ".md" else line for line in text.splitlines()]
        joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
        found += [(path.name, line) for line in joined.splitlines() if re.search(r"jobs/\w+\.py", line)]
    return found


def test_documented_commands_exist_and_their_set_keys_are_config_keys():
    """Each jobs/X.py named in the docs exists and knows every --flag used with it; each --set key=value
    is accepted by the config model (together with the command's --config when it names one)."""
    from overopt.config import ConfigError, load_config

    commands = documented_commands()
    assert len(commands) >= 10, commands
    overrides_seen = 0
    for source, line in commands:
        script = re.search(r"jobs/\w+\.py", line).group(0)
        assert (ROOT / script).is_file(), f"{source}: {script} does not exist"
        source_text = (ROOT / script).read_text()
        if "add_config_arguments(" in source_text:  # --config and --set come from overopt/cli.py
            source_text += (ROOT / "platform" / "overopt" / "cli.py").read_text()
        tokens = shlex.split(line[line.index(script) + len(script) :], comments=True)
        config, overrides = None, []
        for i, token in enumerate(tokens):
            if token.startswith("--"):
                flag = token.split("=")[0]
                assert f'"{flag}"' in source_text, f"{source}: {script} has no option {flag}: {line.strip()}"
            if token == "--config":
                config = ROOT / tokens[i + 1]
                assert config.is_file(), f"{source}: {tokens[i + 1]} does not exist"
            if token == "--set":
                overrides.append(tokens[i + 1])
        for override in overrides:
            try:
                load_config(config, [override])
            except ConfigError as error:
                pytest.fail(f"{source}: --set {override}: {error}")
            overrides_seen += 1
        if "ray job submit" in line or line.lstrip().startswith("entrypoint:"):
            # A Ray job's working directory is a temporary copy: the sweep refuses a relative storage.
            storage = load_config(config, overrides).storage
            assert "://" in storage or storage.startswith(("/", "$PWD", "$HOME")), (
                f"{source}: a Ray job with storage {storage!r} (relative): {line.strip()}"
            )
    assert overrides_seen >= 5


def test_documented_command_check_can_fail():
    from overopt.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="output_dir"):
        load_config(None, ["output_dir=/mnt/shared/overopt"])  # the key the cluster README once documented
    assert load_config(None, ["storage=/mnt/shared/overopt"]).storage == "/mnt/shared/overopt"
