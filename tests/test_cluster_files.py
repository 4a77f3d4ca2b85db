"""The files in cluster/: every one loads, the launcher files pass Ray's own schema, the KubeRay
manifests pin the newest Ray that raytune-torch is tested with, and the secure defaults hold (token auth on every
node, dashboard on loopback or ClusterIP only, SSH-only ingress, no secrets in any file).

Fast: no cluster is started and nothing is contacted.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
LAUNCHER_FILES = ("ray-cpu.yaml", "ray-gpu.yaml")
TOKEN_SECRET = "raytune-auth-token"   # the Secret users create with `kubectl create secret generic`
TOKEN_SECRET_KEY = "auth_token"       # the key KubeRay's authOptions.secretName expects
SHARED_MOUNT = "/mnt/shared"
GPU = "nvidia.com/gpu"


# ---------------------------------------------------------------------------------------------
# helpers


def cluster_files() -> list[Path]:
    """Every file under cluster/, without caches and hidden paths (a local cluster's state)."""
    return sorted(
        p for p in CLUSTER.rglob("*")
        if p.is_file() and p.suffix != ".pyc"
        and not any(part == "__pycache__" or part.startswith(".") for part in p.relative_to(CLUSTER).parts)
    )


def yaml_files() -> list[Path]:
    return [p for p in cluster_files() if p.suffix in (".yaml", ".yml")]


def load_docs(path: Path) -> list[Any]:
    """All YAML documents of a file (empty documents dropped)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def pinned_ray_version() -> str:
    """The Ray version the cluster files name: the newest release of the range that pyproject.toml's
    `ray[...]>=A.B,<C.D` dependency allows and CI tests (raytune_torch._ray.version.NEWEST)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        tomllib = pytest.importorskip("tomli")
    from raytune_torch._ray import version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ray_deps = [d for d in project.get("dependencies", []) if d.replace(" ", "").startswith("ray[")]
    if len(ray_deps) != 1:
        pytest.fail(f"pyproject.toml: expected one `ray[...]` entry in [project].dependencies, got {ray_deps!r}")
    requirement = ray_deps[0].split(";")[0].replace(" ", "")
    low, high = version.OLDEST, version.NEWEST
    expected = f"ray[tune]>={low[0]}.{low[1]},<{high[0]}.{high[1] + 1}"
    if requirement != expected:
        pytest.fail(f"pyproject.toml asks for {requirement!r}; the tested range is {expected!r}")
    return f"{high[0]}.{high[1]}.0"


def image_ray_version(image: str) -> str:
    """`rayproject/ray:2.60.0-py311-gpu` -> `2.60.0`; fails for an image without a versioned tag."""
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        pytest.fail(f"image {image!r} has no tag; pin the Ray version, e.g. rayproject/ray:2.60.0-py311")
    match = re.match(r"(\d+\.\d+\.\d+)(?:-|$)", tag)
    if match is None:
        pytest.fail(f"image {image!r}: its tag does not start with a Ray version (X.Y.Z)")
    return match.group(1)


def launcher_config(name: str) -> dict[str, Any]:
    docs = load_docs(CLUSTER / name)
    assert len(docs) == 1, f"cluster/{name}: a launcher file holds one YAML document, got {len(docs)}"
    return docs[0]


def ray_schema() -> dict[str, Any]:
    """Ray's cluster-launcher schema, from the installed Ray (what `ray up` validates against)."""
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations, "ray is not installed"
    path = Path(list(spec.submodule_search_locations)[0]) / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


def kuberay_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in yaml_files() if path.is_relative_to(KUBERAY) for doc in load_docs(path)]


def docs_of_kind(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path, doc in kuberay_docs() if doc.get("kind") == kind]


def ray_cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    """(where, RayClusterSpec) of every RayCluster and of every RayJob's rayClusterSpec."""
    specs = [(f"{rel(p)} RayCluster {d['metadata']['name']}", d["spec"]) for p, d in docs_of_kind("RayCluster")]
    specs += [(f"{rel(p)} RayJob {d['metadata']['name']}", d["spec"]["rayClusterSpec"])
              for p, d in docs_of_kind("RayJob")]
    return specs


def pod_templates(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(group, pod template) of the head and of every worker group of a RayClusterSpec."""
    yield "head", spec["headGroupSpec"]["template"]
    for group in spec.get("workerGroupSpecs", []):
        yield f"worker group {group['groupName']}", group["template"]


def containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    pod = template["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def all_containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for where, spec in ray_cluster_specs():
        for group, template in pod_templates(spec):
            for container in containers(template):
                yield f"{where}, {group}, container {container['name']}", container
    for path, job in docs_of_kind("RayJob"):
        submitter = job["spec"].get("submitterPodTemplate")
        if submitter:
            for container in containers(submitter):
                yield f"{rel(path)} RayJob submitter, container {container['name']}", container


def is_gpu_container(container: dict[str, Any]) -> bool:
    resources = container.get("resources", {})
    return (GPU in resources.get("limits", {}) or GPU in resources.get("requests", {})
            or "gpu" in container.get("image", "").rpartition(":")[2])


# ---------------------------------------------------------------------------------------------
# every file


def test_every_yaml_file_loads():
    files = yaml_files()
    names = {rel(p) for p in files}
    expected = {f"cluster/{n}" for n in LAUNCHER_FILES} | {
        "cluster/kuberay/raycluster.yaml", "cluster/kuberay/rayjob.yaml", "cluster/kuberay/storage.yaml"}
    assert expected <= names, f"missing: {sorted(expected - names)}"
    for path in files:
        docs = load_docs(path)
        assert docs, f"{rel(path)} holds no YAML document"
        assert all(isinstance(doc, dict) for doc in docs), f"{rel(path)}: every document must be a mapping"


def test_readme_mentions_every_file_and_the_names_in_the_manifests():
    readme = (CLUSTER / "README.md").read_text()
    for path in cluster_files():
        if path.name != "README.md":
            assert rel(path) in readme, f"cluster/README.md does not mention {rel(path)}"
    for command in ("ray up cluster/ray-cpu.yaml", "ray dashboard cluster/ray-cpu.yaml",
                    "ray down cluster/ray-cpu.yaml", "kubectl apply -f cluster/kuberay/raycluster.yaml",
                    "kubectl apply -f cluster/kuberay/rayjob.yaml"):
        assert command in readme, f"cluster/README.md lacks `{command}`"
    # The commands in the README use the names the manifests define.
    for _, cluster in docs_of_kind("RayCluster"):
        assert f"kubectl port-forward svc/{cluster['metadata']['name']}-head-svc 8265:8265" in readme
    for _, job in docs_of_kind("RayJob"):
        assert f"{job['metadata']['name']}-head-svc" in readme
    assert f"kubectl create secret generic {TOKEN_SECRET} --from-file={TOKEN_SECRET_KEY}=" in readme
    assert "python cluster/local_cluster.py start" in readme and "python cluster/local_cluster.py stop" in readme


# ---------------------------------------------------------------------------------------------
# Ray cluster launcher (ray up)


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_file_matches_rays_schema(name):
    import jsonschema

    validator = jsonschema.Draft7Validator(ray_schema())
    errors = [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
              for e in validator.iter_errors(launcher_config(name))]
    assert not errors, f"cluster/{name} does not match Ray's ray-schema.json:\n" + "\n".join(errors)


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_file_passes_the_checks_ray_up_runs_before_launching(name):
    # `ray up` fills in the provider's defaults, merges the setup commands and validates again,
    # all before it contacts AWS.
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(launcher_config(name))
    validate_config(config)
    assert config["head_node_type"] in config["available_node_types"]


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_every_ray_start_has_token_auth_and_the_dashboard_stays_on_loopback(name):
    config = launcher_config(name)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [cmd for cmd in config[key] if "ray start" in cmd]
        assert starts, f"cluster/{name}: no `ray start` in {key}"
        for cmd in starts:
            # Each listed command runs in its own shell: the variable must be set on the same line.
            before = cmd[: cmd.index("ray start")]
            assert re.search(r"\bRAY_AUTH_MODE=token\b", before), (
                f"cluster/{name} {key}: set RAY_AUTH_MODE=token on the same line before `ray start`: {cmd!r}")
    (head,) = [cmd for cmd in config["head_start_ray_commands"] if "ray start" in cmd]
    for flag in ("--head", "--port=6379", "--dashboard-host=127.0.0.1",
                 "--autoscaling-config=~/ray_bootstrap_config.yaml"):
        assert flag in head.split(), f"cluster/{name}: head `ray start` lacks {flag}: {head!r}"
    for cmd in config["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert "--address=$RAY_HEAD_IP:6379" in cmd.split()
    text = (CLUSTER / name).read_text()
    assert set(re.findall(r"--dashboard-host[= ](\S+)", text)) == {"127.0.0.1"}
    assert "RAY_AUTH_MODE=disabled" not in text


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_token_file_is_copied_to_the_nodes_and_never_inlined(name):
    config = launcher_config(name)
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    text = (CLUSTER / name).read_text()
    assert "RAY_AUTH_TOKEN=" not in text and "RAY_AUTH_TOKEN:" not in text


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_inbound_rules_allow_only_ssh_and_not_from_everywhere(name):
    provider = launcher_config(name)["provider"]
    rules = provider.get("security_group", {}).get("IpPermissions")
    assert rules, f"cluster/{name}: provider.security_group.IpPermissions must state the inbound rules"
    for rule in rules:
        assert rule.get("IpProtocol") == "tcp" and rule.get("FromPort") == 22 and rule.get("ToPort") == 22, (
            f"cluster/{name}: an inbound rule other than SSH (tcp 22): {rule}")
        cidrs = [r.get("CidrIp") for r in rule.get("IpRanges", [])]
        cidrs += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])]
        assert cidrs and not {"0.0.0.0/0", "::/0"} & set(cidrs), f"cluster/{name}: SSH open to the world: {rule}"
    for node_type, spec in launcher_config(name)["available_node_types"].items():
        # Security groups given per node type would replace the group (and its rules) above.
        assert "SecurityGroupIds" not in spec["node_config"], f"cluster/{name}: {node_type} sets SecurityGroupIds"


@pytest.mark.parametrize("name, flavour", [("ray-cpu.yaml", "cpu"), ("ray-gpu.yaml", "gpu")])
def test_launcher_images_and_setup(name, flavour):
    config = launcher_config(name)
    version = pinned_ray_version()
    docker = config["docker"]
    images = [docker[k] for k in ("image", "head_image", "worker_image") if k in docker]
    images += [t["docker"]["worker_image"] for t in config["available_node_types"].values()
               if "worker_image" in t.get("docker", {})]
    assert images
    for image in images:
        assert image_ray_version(image) == version, f"cluster/{name}: {image} is not Ray {version}"
    assert docker["image"].endswith(f"-{flavour}")
    setup = "\n".join(config["setup_commands"] + config.get("head_setup_commands", [])
                      + config.get("worker_setup_commands", []))
    assert "pip install" in setup and "torch==" in setup
    assert '"raytune-torch[cluster]"' in setup
    if flavour == "gpu":
        gpus = [t["resources"].get("GPU", 0) for t in config["available_node_types"].values()]
        assert max(gpus) >= 1, f"cluster/{name}: no node type advertises a GPU"
        assert "download.pytorch.org/whl/cpu" not in setup, "the GPU file must install the CUDA build of torch"


# ---------------------------------------------------------------------------------------------
# KubeRay


def test_kuberay_kinds_and_api_version():
    kinds = [(rel(p), d.get("kind")) for p, d in kuberay_docs()]
    assert ("cluster/kuberay/raycluster.yaml", "RayCluster") in kinds
    assert ("cluster/kuberay/rayjob.yaml", "RayJob") in kinds
    for path, doc in kuberay_docs():
        if doc.get("kind") in ("RayCluster", "RayJob"):
            assert doc.get("apiVersion") == "ray.io/v1", f"{rel(path)}: {doc.get('kind')} must be ray.io/v1"
    for path in yaml_files():
        for doc in load_docs(path):
            kind = doc.get("kind")
            assert kind != "Ingress", f"{rel(path)}: no Ingress; reach the dashboard with kubectl port-forward"
            assert kind != "Secret", f"{rel(path)}: no Secret manifests; the token Secret is made from the user's file"
            if kind == "Service":
                service_type = doc.get("spec", {}).get("type", "ClusterIP")
                assert service_type == "ClusterIP", f"{rel(path)}: a {service_type} Service; only ClusterIP"


def test_ray_version_equals_the_image_tags_and_the_pin_in_pyproject():
    version = pinned_ray_version()
    specs = ray_cluster_specs()
    assert specs
    for where, spec in specs:
        assert spec.get("rayVersion") == version, f"{where}: rayVersion {spec.get('rayVersion')!r} != Ray {version}"
        for group, template in pod_templates(spec):
            for container in template["spec"]["containers"]:
                assert image_ray_version(container["image"]) == version, (
                    f"{where}, {group}: image {container['image']} is not Ray {version}")


def test_a_cpu_and_a_gpu_worker_group_and_gpus_in_requests_and_limits():
    for where, spec in ray_cluster_specs():
        kinds = set()
        for group in spec["workerGroupSpecs"]:
            ray_container = group["template"]["spec"]["containers"][0]
            kinds.add("gpu" if is_gpu_container(ray_container) else "cpu")
        assert kinds == {"cpu", "gpu"}, f"{where}: wants a CPU and a GPU worker group, got {sorted(kinds)}"
    gpu_containers = [(w, c) for w, c in all_containers() if is_gpu_container(c)]
    assert gpu_containers
    for where, container in gpu_containers:
        resources = container.get("resources", {})
        requests, limits = resources.get("requests", {}), resources.get("limits", {})
        assert GPU in requests and GPU in limits, f"{where}: {GPU} must be in both requests and limits"
        assert str(requests[GPU]) == str(limits[GPU]) and int(limits[GPU]) >= 1, f"{where}: {resources}"
        assert container["image"].rpartition(":")[2].endswith("-gpu"), f"{where}: a GPU group needs the -gpu image"


def test_every_container_has_token_auth_from_the_secret():
    checked = 0
    for where, container in all_containers():
        env = {e["name"]: e for e in container.get("env", [])}
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: RAY_AUTH_MODE=token missing"
        token = env.get("RAY_AUTH_TOKEN")
        assert token is not None, f"{where}: RAY_AUTH_TOKEN missing"
        assert "value" not in token, f"{where}: RAY_AUTH_TOKEN must come from a Secret, never a literal value"
        assert token.get("valueFrom", {}).get("secretKeyRef") == {"name": TOKEN_SECRET, "key": TOKEN_SECRET_KEY}, (
            f"{where}: RAY_AUTH_TOKEN must be valueFrom.secretKeyRef {TOKEN_SECRET}/{TOKEN_SECRET_KEY}")
        checked += 1
    assert checked >= 6  # head + 2 worker groups, in the RayCluster and in the RayJob
    for where, spec in ray_cluster_specs():
        # The operator's own containers (autoscaler, init, RayJob submitter) and its dashboard calls.
        assert spec.get("authOptions") == {"mode": "token", "secretName": TOKEN_SECRET}, where


def test_head_service_is_cluster_internal():
    for where, spec in ray_cluster_specs():
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: head service must be ClusterIP"
        assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP", where
        assert head.get("enableIngress", False) is False, f"{where}: no Ingress for the dashboard"
        assert spec.get("headServiceAnnotations") is None, where


def test_shared_volume_is_a_rwx_claim_mounted_in_every_pod():
    claims = docs_of_kind("PersistentVolumeClaim")
    assert len(claims) == 1, "one PersistentVolumeClaim (cluster/kuberay/storage.yaml)"
    path, claim = claims[0]
    assert "ReadWriteMany" in claim["spec"]["accessModes"], f"{rel(path)}: the shared claim must be ReadWriteMany"
    claim_name = claim["metadata"]["name"]
    for where, spec in ray_cluster_specs():
        for group, template in pod_templates(spec):
            volumes = {v["name"]: v for v in template["spec"].get("volumes", [])
                       if v.get("persistentVolumeClaim", {}).get("claimName") == claim_name}
            assert volumes, f"{where}, {group}: no volume from the claim {claim_name}"
            ray_container = template["spec"]["containers"][0]   # KubeRay's Ray container
            mounts = [m for m in ray_container.get("volumeMounts", []) if m["name"] in volumes]
            assert [m["mountPath"] for m in mounts] == [SHARED_MOUNT], (
                f"{where}, {group}: mount the claim at {SHARED_MOUNT}")
            assert not any(m.get("readOnly") for m in mounts)


def test_rayjob_runs_the_experiment_on_shared_storage_and_cleans_up():
    jobs = docs_of_kind("RayJob")
    assert jobs
    for path, job in jobs:
        spec = job["spec"]
        entrypoint = spec["entrypoint"].split()
        assert entrypoint[:2] == ["raytune-torch", "run"], f"{rel(path)}: {spec['entrypoint']!r}"
        assert entrypoint[2].startswith(f"{SHARED_MOUNT}/"), f"{rel(path)}: the experiment file is on the shared volume"
        assert "--address auto" in spec["entrypoint"]
        assert "--storage" in entrypoint
        assert entrypoint[entrypoint.index("--storage") + 1] == f"{SHARED_MOUNT}/runs"
        assert spec["shutdownAfterJobFinishes"] is True
        assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0


# ---------------------------------------------------------------------------------------------
# no secrets anywhere


SECRET_PATTERNS = [
    ("an AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("an AWS secret access key", re.compile(r"(?i)aws_secret_access_key[\"']?[ \t]*[:=][ \t]*[\"']?[^\s\"']{20,}")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("a long hex string (a Ray token is 64 hex digits)", re.compile(r"\b[0-9a-fA-F]{32,}\b")),
]
# A key named like a secret, assigned a long token-like value (YAML `key: value`, shell `KEY=value`).
ASSIGNED_SECRET = re.compile(
    r"(?i)\b[\w.-]*(?:token|password|passwd|secret|api[_-]?key)[\w.-]*[\"']?[ \t]*[:=][ \t]*[\"']?"
    r"([A-Za-z0-9+/_=-]{24,})")


def find_secrets(text: str) -> list[str]:
    found = [f"{what}: {m.group(0)[:12]}..." for what, pattern in SECRET_PATTERNS for m in pattern.finditer(text)]
    for m in ASSIGNED_SECRET.finditer(text):
        value = m.group(1)
        if re.search(r"\d", value) and re.search(r"[A-Za-z]", value):
            found.append(f"a token-like value assigned to {m.group(0).split(':')[0].split('=')[0].strip()!r}")
    return found


def test_the_secret_scanner_finds_secrets():
    # Built at run time so that this file holds no secret-looking literal itself.
    key_id = "AKIA" + "ABCDEFGHIJ234567"
    hex_token = "0123456789abcdef" * 4
    b64_token = "aB3" * 12
    assert find_secrets(f"aws_access_key_id = {key_id}")
    assert find_secrets("aws_secret_access_key: " + "x" * 40)
    assert find_secrets(f"  value: {hex_token}")
    assert find_secrets(f"RAY_AUTH_TOKEN={b64_token}")
    assert find_secrets(f"password: {b64_token}")
    assert not find_secrets("secretName: raytune-auth-token\nRAY_AUTH_TOKEN_PATH=$HOME/.ray/auth_token")


@pytest.mark.parametrize("path", cluster_files(), ids=rel)
def test_no_file_contains_a_secret(path):
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        pytest.fail(f"{rel(path)} is not text")
    found = find_secrets(text)
    assert not found, f"{rel(path)} looks like it contains a secret: {found}"
