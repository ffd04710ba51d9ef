"""Every manifest of deploy/k8s is valid: the base and each overlay as kustomize renders them,
and the example Secret, against the Kubernetes schemas (strict: an unknown or misplaced field
fails) and KEDA's CRD schemas — no cluster needed. The validators are shown to refuse broken
manifests too, so a pass means something."""

from __future__ import annotations

import copy

import jsonschema
import kubernetes_validate
import pytest

from tests.unit.k8s_manifests import (
    BASE,
    K8S_VERSIONS,
    OVERLAYS,
    SECRET_EXAMPLE,
    base_resources,
    load_yaml_documents,
    of_kind,
    rendered,
    validate_any,
    validate_keda,
    validate_kubernetes,
)

EXPECTED_KINDS = {
    "Namespace",
    "ConfigMap",
    "Job",
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "PersistentVolumeClaim",
    "ScaledObject",
    "TriggerAuthentication",
}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_base_manifest_is_valid(version: str) -> None:
    resources = base_resources()
    assert {r["kind"] for r in resources} == EXPECTED_KINDS
    for resource in resources:
        validate_any(resource, version)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_every_rendered_overlay_manifest_is_valid(overlay: object, version: str) -> None:
    resources = rendered(overlay)  # type: ignore[arg-type]
    assert {r["kind"] for r in resources} == EXPECTED_KINDS
    for resource in resources:
        validate_any(resource, version)


def test_the_base_renders_as_the_tests_read_it() -> None:
    """The tests read the base's files directly (so that they need no kubectl); kustomize's own
    rendering of it is the same set of objects."""
    by_kustomize = {(r["kind"], r["metadata"]["name"]): r for r in rendered(BASE)}
    by_tests = {(r["kind"], r["metadata"]["name"]): r for r in base_resources()}
    assert by_kustomize == by_tests


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_example_secret_is_valid(version: str) -> None:
    (secret,) = load_yaml_documents(SECRET_EXAMPLE)
    validate_kubernetes(secret, version)
    assert secret["metadata"]["name"] == "llmq-secrets"


def test_the_production_overlay_patches_what_it_says() -> None:
    (production,) = [p for p in OVERLAYS if p.name == "production"]
    resources = rendered(production)
    images = {c["image"] for r in of_kind(resources, "Deployment").values() for c in _all(r)}
    assert images == {"registry.example.com/llmq:0.1.0"}
    api = of_kind(resources, "Deployment")["llmq-api"]
    assert api["spec"]["replicas"] == 3
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert {"name": "LLMQ_API_WORKERS", "value": "3"} in container["env"]
    assert container["resources"]["requests"]["cpu"] == "1"
    # the patch added to the env list, it did not replace the Secret references
    assert any(e["name"] == "DATABASE_URL" for e in container["env"])
    scaled = of_kind(resources, "ScaledObject")["llmq-worker-llm"]["spec"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (2, 20)
    assert len(scaled["triggers"]) == 3  # a merge patch of the bounds kept the triggers


def _all(deployment: dict[str, object]) -> list[dict[str, str]]:
    spec = deployment["spec"]["template"]["spec"]  # type: ignore[index]
    return [*spec.get("initContainers", []), *spec["containers"]]  # type: ignore[no-any-return]


# --- the validators refuse what a cluster would refuse --------------------------------------------


def _api_deployment() -> dict[str, object]:
    return copy.deepcopy(of_kind(base_resources(), "Deployment")["llmq-api"])


@pytest.mark.parametrize(
    "breakage",
    [
        "unknown field",
        "wrong type",
        "missing required",
    ],
)
def test_the_kubernetes_validator_refuses_a_broken_deployment(breakage: str) -> None:
    deployment = _api_deployment()
    container = deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    if breakage == "unknown field":
        container["livenessProbes"] = container.pop("livenessProbe")  # a typo
    elif breakage == "wrong type":
        deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "60s"  # type: ignore[index]
    else:
        del deployment["spec"]["selector"]  # type: ignore[attr-defined]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_kubernetes(deployment, K8S_VERSIONS[-1])


@pytest.mark.parametrize("breakage", ["unknown field", "metadata not strings", "no target"])
def test_the_keda_validator_refuses_a_broken_scaled_object(breakage: str) -> None:
    scaled = copy.deepcopy(of_kind(base_resources(), "ScaledObject")["llmq-worker-llm"])
    if breakage == "unknown field":
        scaled["spec"]["maxReplicas"] = scaled["spec"].pop("maxReplicaCount")  # the HPA's name
    elif breakage == "metadata not strings":
        scaled["spec"]["triggers"][0]["metadata"]["databaseIndex"] = 0  # must be "0"
    else:
        del scaled["spec"]["scaleTargetRef"]
    with pytest.raises(jsonschema.ValidationError):
        validate_keda(scaled)
