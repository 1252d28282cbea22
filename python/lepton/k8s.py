"""Kubernetes manifests for one model with each version in a pod of its own: a Deployment and a
Service per version, each running ``lepton serve`` pinned to that version, and a router Deployment
that runs the model's policy over them as remote versions (``lepton.Remote``). ``lepton k8s``
prints them."""
import json
import re
from typing import Any, Dict, List, Optional

from .errors import InvalidArgument

_DNS = re.compile(r"[^a-z0-9-]+")


def _dns(*parts: str) -> str:
    """A Kubernetes object name (RFC 1123 label) from a model and version names."""
    name = _DNS.sub("-", "-".join(parts).lower()).strip("-")
    if not name:
        raise InvalidArgument(f"cannot make a Kubernetes name from {parts!r}")
    return name[:63].rstrip("-")


def _container(name: str, image: str, args: List[str], cpu: str, memory: str) -> Dict[str, Any]:
    env: List[Dict[str, Any]] = [
        {"name": "LEPTON_HOME", "valueFrom": {"secretKeyRef": {"name": "lepton", "key": "registry-url"}}},
        {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "lepton", "key": "database-password"}}},
        {"name": "LEPTON_TOKEN", "valueFrom": {"secretKeyRef": {"name": "lepton", "key": "token"}}},
        {"name": "LEPTON_BLOBS", "value": "/var/lib/lepton/artifacts"},
        {"name": "LEPTON_REPLICA", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "ports": [{"name": "http", "containerPort": 8000, "protocol": "TCP"},
                  {"name": "grpc", "containerPort": 8001, "protocol": "TCP"}],
        "env": env,
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10,
                          "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5,
                           "failureThreshold": 2},
        "startupProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 5,
                         "failureThreshold": 60},
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "artifacts", "mountPath": "/var/lib/lepton/artifacts"}],
    }


def _deployment(name: str, namespace: str, labels: Dict[str, str], replicas: int,
                container: Dict[str, Any], volumes: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": labels, "annotations": {"prometheus.io/scrape": "true",
                                                               "prometheus.io/port": "8000",
                                                               "prometheus.io/path": "/metrics"}},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
                    "terminationGracePeriodSeconds": 45,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def _service(name: str, namespace: str, labels: Dict[str, str]) -> Dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"selector": labels, "ports": [
            {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"},
            {"name": "grpc", "port": 8001, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"}]},
    }


def manifests(model: str, versions: List[str], *, policy: Optional[Dict[str, Any]] = None,
              image: str = "lepton:latest", namespace: str = "default", namespace_per_version: bool = False,
              replicas: int = 1, router_replicas: int = 2, cpu: str = "1", memory: str = "2Gi",
              artifacts_claim: str = "lepton-artifacts") -> List[Dict[str, Any]]:
    """The objects, in the order to apply them. Each version's pods serve ``model=version`` alone
    from the registry in the ``lepton`` Secret (as deploy/kubernetes/lepton.yaml's do); the router
    serves the model with ``policy`` over every version as a remote one, by its Service's name.
    With ``namespace_per_version`` each version lives in a namespace of its own
    (``<namespace>-<version>``), made here too."""
    if not versions:
        raise InvalidArgument("give at least one version")
    if len(set(versions)) != len(versions):
        raise InvalidArgument("a version is listed twice")
    if replicas < 1 or router_replicas < 1:
        raise InvalidArgument("replicas must be at least 1")
    artifacts = [{"name": "artifacts", "persistentVolumeClaim": {"claimName": artifacts_claim}}]
    objects: List[Dict[str, Any]] = []
    remotes: Dict[str, Dict[str, Any]] = {}
    for v in versions:
        ns = _dns(namespace, v) if namespace_per_version else namespace
        name = _dns("lepton", model, v)
        labels = {"app.kubernetes.io/name": "lepton", "app.kubernetes.io/instance": name,
                  "lepton.ai/model": _dns(model), "lepton.ai/version": _dns(v)}
        if namespace_per_version:
            objects.append({"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": ns, "labels": {"app.kubernetes.io/name": "lepton"}}})
        container = _container("lepton", image, ["--model", f"{model}={v}", "--only"], cpu, memory)
        objects.append(_deployment(name, ns, labels, replicas, container, artifacts))
        objects.append(_service(name, ns, labels))
        remotes[v] = {"url": f"http://{name}.{ns}.svc.cluster.local:8000", "model": model, "version": v}
    router = _dns("lepton", model, "router")
    spec: Dict[str, Any] = {"versions": list(versions), "remotes": remotes}
    if policy is not None:
        spec["policy"] = policy
    config = {"models": {model: spec}, "only": True}
    objects.append({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": router, "namespace": namespace,
                                 "labels": {"app.kubernetes.io/name": "lepton"}},
                    "data": {"router.json": json.dumps(config, indent=2)}})
    labels = {"app.kubernetes.io/name": "lepton", "app.kubernetes.io/instance": router,
              "lepton.ai/model": _dns(model), "lepton.ai/role": "router"}
    container = _container("lepton", image, ["--config", "/etc/lepton/router.json"], cpu, "1Gi")
    container["volumeMounts"].append({"name": "config", "mountPath": "/etc/lepton", "readOnly": True})
    volumes = artifacts + [{"name": "config", "configMap": {"name": router}}]
    objects.append(_deployment(router, namespace, labels, router_replicas, container, volumes))
    objects.append(_service(router, namespace, labels))
    return objects


def dump(objects: List[Dict[str, Any]]) -> str:
    """The objects as one YAML stream (each document written as JSON, which is YAML)."""
    return "".join("---\n" + json.dumps(o, indent=2) + "\n" for o in objects)
