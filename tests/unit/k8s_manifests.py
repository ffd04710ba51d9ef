"""The Kubernetes manifests of deploy/k8s as the tests see them: rendered, and validated against
real schemas, with no cluster.

- Rendering: the production overlay through ``kubectl kustomize`` (kubectl bundles kustomize;
  the machine image has it) or a ``kustomize`` binary; the base needs neither: its files are
  read as its kustomization lists them, with its namespace and labels applied as kustomize does.
- Kubernetes kinds: the OpenAPI-derived JSON schemas that the ``kubernetes-validate`` package
  bundles, strict (an unknown field is an error, as with kubectl's default server-side
  ``--validate=strict``), for the oldest and newest Kubernetes versions checked.
- KEDA kinds (CRDs): the openAPIV3Schema of KEDA's CRDs, vendored under schemas/keda, with every
  object that lists properties closed to others (strict field validation does the same for a
  CRD's structural schema).
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
SECRET_EXAMPLE = K8S / "secrets" / "llmq-secrets.example.yaml"
KEDA_SCHEMAS = Path(__file__).resolve().parent / "schemas" / "keda"
# The oldest Kubernetes that KEDA 2.12+ and every field used here support, and the newest known.
K8S_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())

Resource = dict[str, Any]


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@cache
def _parsed(text: str) -> tuple[Resource, ...]:
    return tuple(doc for doc in yaml.load_all(text, Loader=_LOADER) if doc)


def load_yaml_documents(path: Path) -> list[Resource]:
    """The documents of a YAML file (a fresh copy each call: tests may change them)."""
    return copy.deepcopy(list(_parsed(path.read_text())))


def base_resources() -> list[Resource]:
    """The base as kustomize builds it: its listed resources, in its namespace, with its labels
    (selectors untouched: ``includeSelectors: false``)."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    resources: list[Resource] = []
    for name in kustomization["resources"]:
        resources += load_yaml_documents(BASE / name)
    extra_labels: dict[str, str] = {}
    for group in kustomization.get("labels", []):
        assert not group.get("includeSelectors"), "the base's labels must not touch selectors"
        extra_labels.update(group["pairs"])
    for resource in resources:
        metadata = resource.setdefault("metadata", {})
        if resource["kind"] != "Namespace":
            metadata["namespace"] = kustomization["namespace"]
        metadata.setdefault("labels", {}).update(extra_labels)
    return resources


def kustomize_command() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


@cache
def _rendered(directory: str) -> tuple[str, ...]:
    command = kustomize_command()
    if command is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl (or kustomize) is not installed: cannot render the overlays")
        pytest.skip("kubectl (or kustomize) is not installed: the overlays are not rendered")
    out = subprocess.run(
        [*command, directory],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "KUBECONFIG": os.devnull},  # rendering needs no cluster
    )
    assert out.returncode == 0, out.stderr
    return (out.stdout,)


def rendered(directory: Path) -> list[Resource]:
    """``kubectl kustomize <directory>``, parsed (a fresh copy each call)."""
    return copy.deepcopy(list(_parsed(_rendered(str(directory))[0])))


def of_kind(resources: list[Resource], kind: str) -> dict[str, Resource]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def validate_kubernetes(resource: Resource, version: str) -> None:
    """Raises ``kubernetes_validate.ValidationError`` on a manifest the schema refuses."""
    kubernetes_validate.validate(resource, version, strict=True)


def _closed(schema: Any) -> Any:
    if isinstance(schema, dict):
        for value in schema.values():
            _closed(value)
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        for item in schema:
            _closed(item)
    return schema


@cache
def _keda_validator(kind: str) -> jsonschema.Draft7Validator:
    schema = yaml.safe_load((KEDA_SCHEMAS / f"{kind.lower()}.v1alpha1.yaml").read_text())
    return jsonschema.Draft7Validator(_closed(schema))


def validate_keda(resource: Resource) -> None:
    """Raises ``jsonschema.ValidationError`` on a KEDA object its CRD's schema refuses."""
    assert resource["apiVersion"] == "keda.sh/v1alpha1", resource["apiVersion"]
    _keda_validator(resource["kind"]).validate(resource)
    # What the API server checks of any object's metadata: a DNS-1123 subdomain name.
    jsonschema.validate(
        resource["metadata"],
        {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"}},
        },
    )


def validate_any(resource: Resource, version: str) -> None:
    if resource["apiVersion"].startswith("keda.sh/"):
        validate_keda(resource)
    else:
        validate_kubernetes(resource, version)


def pod_specs(resources: list[Resource]) -> dict[str, Resource]:
    """The pod spec of every workload (Deployments, Jobs), by workload name."""
    return {
        r["metadata"]["name"]: r["spec"]["template"]["spec"]
        for r in resources
        if r["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet")
    }


def containers(resources: list[Resource]) -> list[tuple[str, Resource]]:
    """Every container and init container, as (workload name, container)."""
    found = []
    for name, spec in pod_specs(resources).items():
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            found.append((name, container))
    return found
