"""The deployment files in deploy/: Kubernetes objects checked field by field against the
official Kubernetes Python client's models (every field known, every type right, required fields
present), KServe objects against the CRDs' openAPIV3Schema, the Grafana dashboard's queries
against the metrics a live server exports, and the container's command against the CLI."""
import copy
import json
import os
import re
import subprocess
import sys

import pytest
import requests
import torch
import yaml

import kubernetes  # Debian's python3-kubernetes (the bootstrap installs it)

import lepton
from conftest import AddN

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
DEPLOY = os.path.join(ROOT, "deploy")
CRDS = os.path.join(ROOT, "tests", "data", "kserve")

# The client's model for each kind. autoscaling/v2 is autoscaling/v2beta2 promoted unchanged; this
# client predates the promotion, so v2 objects are checked against the v2beta2 model.
MODELS = {
    ("v1", "Secret"): "V1Secret",
    ("v1", "Service"): "V1Service",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2beta2HorizontalPodAutoscaler",
}


def documents(*parts):
    with open(os.path.join(DEPLOY, *parts)) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def check(value, type_name, path):
    """Raises AssertionError naming the path of the first unknown field or wrong type."""
    if type_name.startswith("list["):
        assert isinstance(value, list), f"{path}: expected a list, got {value!r}"
        for i, v in enumerate(value):
            check(v, type_name[5:-1], f"{path}[{i}]")
    elif type_name.startswith("dict("):
        assert isinstance(value, dict), f"{path}: expected a mapping, got {value!r}"
        inner = type_name[type_name.index(",") + 1:-1].strip()
        for k, v in value.items():
            assert isinstance(k, str), f"{path}: key {k!r} is not a string"
            check(v, inner, f"{path}.{k}")
    elif type_name == "str":
        assert isinstance(value, str), f"{path}: expected a string, got {value!r}"
    elif type_name == "int":
        assert isinstance(value, int) and not isinstance(value, bool), f"{path}: expected an integer, got {value!r}"
    elif type_name == "bool":
        assert isinstance(value, bool), f"{path}: expected true or false, got {value!r}"
    elif type_name == "float":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{path}: expected a number"
    elif type_name == "object":  # int-or-string, quantities
        assert isinstance(value, (int, str)), f"{path}: expected an integer or a string, got {value!r}"
    elif type_name == "datetime":
        assert isinstance(value, str), f"{path}: expected a timestamp"
    else:
        model = getattr(kubernetes.client, type_name)
        assert isinstance(value, dict), f"{path}: expected a {type_name} object, got {value!r}"
        fields = {json_name: attr for attr, json_name in model.attribute_map.items()}
        for k, v in value.items():
            assert k in fields, f"{path}: {type_name} has no field '{k}'"
            check(v, model.openapi_types[fields[k]], f"{path}.{k}")


def validate_kubernetes(obj):
    model = MODELS[(obj["apiVersion"], obj["kind"])]
    check(obj, model, obj["kind"])
    # Building the model checks required fields (the client raises ValueError for a missing one).
    kubernetes.client.ApiClient()._ApiClient__deserialize(copy.deepcopy(obj), model)


def test_the_kubernetes_manifests_are_valid_objects():
    objects = documents("kubernetes", "lepton.yaml") + documents("kubernetes", "secret.yaml")
    assert sorted(o["kind"] for o in objects) == sorted(
        ["PersistentVolumeClaim", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Secret"])
    for o in objects:
        validate_kubernetes(o)
    by_kind = {o["kind"]: o for o in objects}
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    secrets = {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]
               if "secretKeyRef" in e.get("valueFrom", {})}
    assert secrets == set(by_kind["Secret"]["stringData"])
    # Each replica is named after its pod in shared policies' leads and audit rows.
    env = {e["name"]: e for e in container["env"]}
    assert env["LEPTON_REPLICA"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # The selectors find the pods, and the autoscaler scales this Deployment.
    labels = by_kind["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        selector = by_kind[kind]["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items()
    assert by_kind["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == by_kind["Deployment"]["metadata"]["name"]
    assert by_kind["PodDisruptionBudget"]["spec"]["minAvailable"] < by_kind["HorizontalPodAutoscaler"]["spec"]["minReplicas"]


def test_the_validator_catches_unknown_fields_and_wrong_types():
    deployment = documents("kubernetes", "lepton.yaml")[1]
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/x"
    with pytest.raises(AssertionError, match="V1HTTPGetAction has no field 'paht'"):
        validate_kubernetes(bad)
    bad = copy.deepcopy(deployment)
    bad["spec"]["replicas"] = "3"
    with pytest.raises(AssertionError, match="spec.replicas: expected an integer"):
        validate_kubernetes(bad)


def strict(schema):
    """The CRD's schema with unknown fields refused wherever the CRD does not keep them."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if "properties" in out and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_schema(filename, version):
    with open(os.path.join(CRDS, filename)) as f:
        crd = yaml.safe_load(f)
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return strict(v["schema"]["openAPIV3Schema"])
    raise AssertionError(f"{filename} has no version {version}")


@pytest.mark.parametrize("manifest,crd", [
    ("servingruntime.yaml", "serving.kserve.io_servingruntimes.yaml"),
    ("inferenceservice.yaml", "serving.kserve.io_inferenceservices.yaml"),
])
def test_the_kserve_manifests_validate_against_the_crds(manifest, crd):
    import jsonschema

    (obj,) = documents("kserve", manifest)
    schema = crd_schema(crd, obj["apiVersion"].split("/")[1])
    jsonschema.validate(obj, schema)
    wrong = copy.deepcopy(obj)
    wrong["spec"]["unknownField"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong, schema)


def test_the_inference_service_uses_the_runtime_and_its_format():
    (runtime,) = documents("kserve", "servingruntime.yaml")
    (service,) = documents("kserve", "inferenceservice.yaml")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]


def test_the_dashboards_queries_use_metrics_a_server_exports(registry):
    with open(os.path.join(DEPLOY, "grafana", "lepton.json")) as f:
        dashboard = json.load(f)
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    registry.register("m", AddN(1), version="v1", example_inputs=torch.zeros(1, 4))
    with lepton.serve(registry, port=0, grpc_port=0, memory_budget="64MB") as s:
        requests.post(s.url + "/v2/models/m/infer",
                      json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]})
        exported = set(re.findall(r"^# TYPE (\S+)", requests.get(s.url + "/metrics").text, re.M))
        assert requests.get(s.url + "/v2/health/live").status_code == 200
        assert requests.get(s.url + "/v2/health/ready").status_code == 200
    for q in queries:
        for name in re.findall(r"\blepton_[a-z_]+", q):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in exported, f"the dashboard queries {name}, which no server exports ({q})"


def test_the_container_runs_what_the_cli_accepts(python_env):
    with open(os.path.join(DEPLOY, "Dockerfile")) as f:
        dockerfile = f.read()
    assert re.search(r"^RUN scripts/bootstrap", dockerfile, re.M)
    user = re.search(r"^USER (\S+)", dockerfile, re.M).group(1)
    assert user not in ("root", "0")
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])", dockerfile, re.M).group(1))
    assert entry[:2] == ["lepton", "serve"]
    (runtime,) = documents("kserve", "servingruntime.yaml")
    args = runtime["spec"]["containers"][0]["args"]
    helptext = subprocess.run([sys.executable, "-m", "lepton", "serve", "--help"], env=python_env,
                              capture_output=True, text=True, check=True).stdout
    for flag in [a for a in entry[2:] + args if a.startswith("--")]:
        assert flag in helptext, f"lepton serve has no option {flag}"
    exposed = {int(p) for p in re.findall(r"^EXPOSE (.*)$", dockerfile, re.M)[0].split()}
    deployment = documents("kubernetes", "lepton.yaml")[1]
    ports = {p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert ports == exposed
