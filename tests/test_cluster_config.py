"""The cloud cluster configs stay valid and keep what the README promises.

cluster.yaml is checked offline against the cluster launcher's JSON schema shipped in the installed
Ray package (ray/autoscaler/ray-schema.json) and by the launcher's own config preparation; then for
the properties the README relies on: GPU workers that scale from zero, the package installed on
every node, the dashboard (and job API) bound to the head's localhost, token authentication on
every node. deploy/kuberay-rayjob.yaml is checked for the same promises on Kubernetes.
"""

import copy
import json
import shlex
from pathlib import Path

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = ROOT / "cluster.yaml"
RAYJOB_YAML = ROOT / "deploy" / "kuberay-rayjob.yaml"
SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
GPU_INSTANCE_FAMILIES = ("g4dn.", "g5.", "g6.", "g6e.", "p3.", "p4d.", "p5.")


@pytest.fixture(scope="module")
def validator():
    """A validator for Ray's cluster launcher schema (draft 7), from the installed package."""
    jsonschema = pytest.importorskip(
        "jsonschema", reason="jsonschema is not installed (Ray normally depends on it): cannot validate"
    )
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def rayjob_documents() -> list[dict]:
    return list(yaml.safe_load_all(RAYJOB_YAML.read_text()))


def _of_kind(documents: list[dict], kind: str) -> dict:
    found = [d for d in documents if d and d.get("kind") == kind]
    assert len(found) == 1, f"{RAYJOB_YAML.name} should hold one {kind}, has {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def rayjob(rayjob_documents) -> dict:
    return _of_kind(rayjob_documents, "RayJob")


@pytest.fixture(scope="module")
def network_policy(rayjob_documents) -> dict:
    return _of_kind(rayjob_documents, "NetworkPolicy")


def _errors(validator, config: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}"
            for e in validator.iter_errors(config)]


def _gpu_worker_types(cluster: dict) -> dict[str, dict]:
    """The worker node types that have a GPU (by resources, instance type or accelerators)."""
    found = {}
    for name, node in cluster["available_node_types"].items():
        if name == cluster["head_node_type"]:
            continue
        node_config = node.get("node_config", {})
        if (node.get("resources", {}).get("GPU", 0) >= 1
                or str(node_config.get("InstanceType", "")).startswith(GPU_INSTANCE_FAMILIES)
                or node_config.get("guestAccelerators")):
            found[name] = node
    return found


def _start_command(commands: list[str]) -> str:
    starts = [c for c in commands if "ray start" in c]
    assert len(starts) == 1, commands
    return starts[0]


# (a) the launcher's schema and its own checks


def test_cluster_yaml_is_valid_against_the_launchers_schema(validator, cluster):
    assert _errors(validator, cluster) == []


def test_cluster_yaml_passes_the_launchers_own_preparation_and_checks(validator, cluster):
    """What `ray up` does before it contacts the cloud: merge the provider's defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


# (c) validation can fail


def _head(c: dict) -> dict:
    return c["available_node_types"][c["head_node_type"]]


@pytest.mark.parametrize("breakage", [
    pytest.param(lambda c: c.__setitem__("max_workers", "many"), id="max_workers-not-an-integer"),
    pytest.param(lambda c: c.__setitem__("gpu_workers", 8), id="unknown-top-level-key"),
    pytest.param(lambda c: c.pop("provider"), id="provider-missing"),
    pytest.param(lambda c: _head(c).__setitem__("resources", {"CPU": 0.5}), id="fractional-resource"),
    pytest.param(lambda c: _head(c).__setitem__("setup_commands", []), id="unknown-node-type-key"),
])
def test_a_broken_copy_fails_schema_validation(validator, cluster, breakage):
    broken = copy.deepcopy(cluster)
    breakage(broken)
    assert _errors(validator, broken), "the broken copy should not validate"


# (b) what the README promises


def test_gpu_workers_scale_from_zero(cluster):
    gpu_types = _gpu_worker_types(cluster)
    assert gpu_types, "no worker node type with a GPU"
    assert cluster["max_workers"] > 0
    for name, node in gpu_types.items():
        assert node.get("min_workers", 0) == 0, name
        assert 0 < node["max_workers"] <= cluster["max_workers"], name
    assert cluster["idle_timeout_minutes"] > 0


def test_head_runs_no_training(cluster):
    head = _head(cluster)
    assert head["resources"].get("CPU") == 0
    assert head["resources"].get("GPU", 0) == 0


def test_setup_commands_install_this_package_from_the_copied_checkout(cluster):
    remotes = [remote for remote, local in cluster["file_mounts"].items() if local in (".", "./")]
    assert len(remotes) == 1, cluster["file_mounts"]
    checkout = remotes[0]
    installs = [c for c in cluster["setup_commands"]
                if f"pip install -e {checkout}" in c or f"pip install {checkout}" in c]
    assert installs, cluster["setup_commands"]
    assert ".gitignore" in cluster.get("rsync_filter", []), "runs/ and .venv/ would be copied to every node"


def test_dashboard_and_job_api_are_bound_to_the_heads_localhost(cluster):
    head_start = _start_command(cluster["head_start_ray_commands"])
    assert "--head" in head_start
    assert "--dashboard-host=127.0.0.1" in head_start
    every_command = json.dumps(cluster)
    assert "0.0.0.0" not in every_command


@pytest.mark.parametrize("key", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_ray_starts_with_token_authentication_on_every_node(cluster, key):
    start = _start_command(cluster[key])
    assert "RAY_AUTH_MODE=token" in start, "each command runs in its own shell: set it where ray starts"
    assert start.index("RAY_AUTH_MODE=token") < start.index("ray start")


def test_every_node_gets_the_clients_token(cluster):
    mounted = [remote for remote, local in cluster["file_mounts"].items() if local == "~/.ray/auth_token"]
    assert len(mounted) == 1, cluster["file_mounts"]
    assert any(mounted[0] in c and "~/.ray/auth_token" in c for c in cluster["setup_commands"])


# (d) the KubeRay RayJob


def test_rayjob_runs_gerne_ray_tune_on_an_autoscaling_gpu_group(rayjob):
    from gerne_ray.spec import load_spec

    assert rayjob["apiVersion"] == "ray.io/v1"
    assert rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True

    entrypoint = spec["entrypoint"]
    args = shlex.split(entrypoint)
    assert args[:2] == ["gerne-ray", "tune"], entrypoint
    assert not {"&&", ";", "||", "|"} & set(args), "KubeRay splices the entrypoint into a shell command"
    assert (ROOT / args[2]).is_file(), args[2]
    overrides = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--set")
    storage = overrides.pop("storage.path", "")
    assert "://" in storage or storage.startswith("/"), "storage.path must be shared storage"
    load_spec(ROOT / args[2], [f"{k}={v}" for k, v in overrides.items()])  # the rest is valid (offline)

    cluster = spec["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0"
    (group,) = cluster["workerGroupSpecs"]
    assert group["minReplicas"] == 0
    assert group["maxReplicas"] > 0
    (worker,) = group["template"]["spec"]["containers"]
    assert str(worker["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert cluster.get("authOptions", {}).get("mode") == "token"


def _pod_templates(rayjob: dict) -> dict[str, dict]:
    """Every pod template of the RayJob: head, each worker group, the submitter."""
    cluster = rayjob["spec"]["rayClusterSpec"]
    templates = {"head": cluster["headGroupSpec"]["template"]}
    templates.update({f"worker {g['groupName']}": g["template"] for g in cluster["workerGroupSpecs"]})
    templates["submitter"] = rayjob["spec"]["submitterPodTemplate"]
    return templates


def _non_root(context: dict) -> list[str]:
    """What a container securityContext lacks of: non-root uid 1000, no escalation, no capabilities."""
    wanted = {"runAsNonRoot": True, "runAsUser": 1000, "allowPrivilegeEscalation": False}
    missing = [f"{k}: {v}" for k, v in wanted.items() if context.get(k) != v]
    if context.get("capabilities", {}).get("drop") != ["ALL"]:
        missing.append("capabilities.drop: [ALL]")
    if context.get("privileged"):
        missing.append("not privileged")
    return missing


def test_rayjob_containers_run_as_non_root_without_capabilities(rayjob):
    problems = []
    for name, template in _pod_templates(rayjob).items():
        pod = template["spec"].get("securityContext", {})
        if pod.get("runAsUser", 1000) == 0 or pod.get("runAsNonRoot") is not True:
            problems.append(f"{name} pod: runAsNonRoot")
        for container in template["spec"]["containers"]:
            lacks = _non_root(container.get("securityContext", {}))
            problems += [f"{name}/{container['name']}: {m}" for m in lacks]
    autoscaler = rayjob["spec"]["rayClusterSpec"]["autoscalerOptions"].get("securityContext", {})
    problems += [f"autoscaler: {m}" for m in _non_root(autoscaler)]
    assert problems == []


def test_rayjob_exposes_no_ray_client_port(rayjob):
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]
    (container,) = head["template"]["spec"]["containers"]
    ports = {p["containerPort"] for p in container.get("ports", [])}
    assert 8265 in ports and 10001 not in ports, ports  # KubeRay builds the head Service from these
    assert "ray-client-server-port" not in head["rayStartParams"]


def test_network_policy_admits_only_the_jobs_pods_and_the_namespace_to_the_dashboard(rayjob, network_policy):
    assert network_policy["apiVersion"] == "networking.k8s.io/v1"
    spec = network_policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    selector = spec["podSelector"]["matchLabels"]
    for name, template in _pod_templates(rayjob).items():  # every Ray pod, not the submitter
        labels = template.get("metadata", {}).get("labels", {})
        covered = all(labels.get(k) == v for k, v in selector.items())
        assert covered == (name != "submitter"), (name, labels, selector)
    among_themselves, dashboard = spec["ingress"]
    assert among_themselves == {"from": [{"podSelector": {"matchLabels": selector}}]}
    assert dashboard["ports"] == [{"protocol": "TCP", "port": 8265}]
    for peer in dashboard["from"]:
        if "namespaceSelector" not in peer:
            assert peer == {"podSelector": {}}  # this namespace only: where KubeRay runs the submitter
        else:  # another namespace: only the KubeRay operator's pods, never a whole namespace
            assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "kuberay-operator"}
    assert "ipBlock" not in json.dumps(spec), "no addresses from outside the cluster"


def test_network_policy_comes_first_so_that_it_is_in_place_before_the_pods(rayjob_documents):
    kinds = [d["kind"] for d in rayjob_documents if d]
    assert kinds == ["NetworkPolicy", "RayJob"]
