"""The manifests run what llmq really is: every container command is a real ``llmq`` command
with options it accepts, the same processes as the Procfile, every environment variable is one
llmq reads, every Secret and ConfigMap key they name exists, the probes hit routes the apps
serve, and the image is the one docker-compose builds."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner
from flask import Flask
from pydantic import AliasChoices

from llmq.api.app import create_app
from llmq.cli import main
from llmq.config.settings import Settings, get_settings
from llmq.tasks.app import configure_celery
from tests.unit.conftest import REDIS_URL
from tests.unit.k8s_manifests import (
    BASE,
    OVERLAYS,
    ROOT,
    SECRET_EXAMPLE,
    Resource,
    base_resources,
    containers,
    load_yaml_documents,
    of_kind,
    rendered,
)

# Read by llmq/api/gunicorn_conf.py from the environment (gunicorn's settings, not Settings').
GUNICORN_ENV = set(
    re.findall(
        r"os\.environ\.get\(\s*['\"]([A-Z0-9_]+)['\"]", (ROOT / "llmq/api/gunicorn_conf.py").read_text()
    )
)
# Named OpenAI-compatible providers (Settings reads LLMQ_PROVIDER_<NAME>_BASE_URL/_API_KEY).
PROVIDER_ENV = re.compile(r"^LLMQ_PROVIDER_[A-Z0-9_]+_(BASE_URL|API_KEY)$")
# Settings being added on another branch of issue 13 (the admin API's token).
PENDING_SETTINGS = {"LLMQ_ADMIN_TOKEN"}
# Keys of the Secret that no llmq process reads: KEDA's operator reads them (keda.yaml).
KEDA_ONLY_SECRET_KEYS = {"REDIS_PASSWORD"}


def settings_env_names() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if alias is None:
            names.add(f"LLMQ_{name}".upper())
        elif isinstance(alias, str):
            names.add(alias.upper())
        elif isinstance(alias, AliasChoices):
            names.update(str(choice).upper() for choice in alias.choices)
    return names


def _secret_example() -> Resource:
    (secret,) = load_yaml_documents(SECRET_EXAMPLE)
    return secret


def _config_map() -> dict[str, str]:
    data: dict[str, str] = of_kind(base_resources(), "ConfigMap")["llmq-config"]["data"]
    return data


def _resolve(argv: list[str]) -> tuple[click.Command, list[str], list[str]]:
    """The leaf click command of ``llmq <argv>``, the path to it and its remaining arguments."""
    command: click.Command = main
    path = ["llmq"]
    rest = list(argv)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.get_command(click.Context(command), rest[0])
        assert sub is not None, f"`{shlex.join(path + rest)}`: llmq has no command {rest[0]!r}"
        path.append(rest.pop(0))
        command = sub
    return command, path, rest


def _commands(resources: list[Resource], *, init: bool) -> set[str]:
    found = set()
    for _, spec in _pod_specs(resources):
        for container in spec.get("initContainers", []) if init else spec["containers"]:
            found.add(shlex.join(container["command"]))
    return found


def _pod_specs(resources: list[Resource]) -> Iterator[tuple[str, Resource]]:
    for r in resources:
        if r["kind"] in ("Deployment", "Job"):
            yield r["metadata"]["name"], r["spec"]["template"]["spec"]


# --- commands ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", sorted({shlex.join(c["command"]) for _, c in containers(base_resources())})
)
def test_every_container_command_is_a_real_llmq_command(command: str) -> None:
    argv = shlex.split(command)
    assert argv[0] == "llmq", "every process is an `llmq` command (the Procfile's and compose's)"
    leaf, path, rest = _resolve(argv[1:])
    assert not isinstance(leaf, click.Group), f"`{command}` names a group, not a command"
    assert CliRunner().invoke(main, [*path[1:], "--help"]).exit_code == 0
    leaf.make_context(" ".join(path), rest)  # raises click.UsageError on an option it refuses


def test_an_unknown_option_would_be_caught() -> None:
    leaf, path, rest = _resolve(["worker", "--queue", "llm"])
    with pytest.raises(click.UsageError):
        leaf.make_context(" ".join(path), rest)


def test_the_manifests_run_the_procfiles_processes() -> None:
    procfile = {
        line.split(":", 1)[0]: shlex.join(shlex.split(line.split(":", 1)[1]))
        for line in (ROOT / "Procfile").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    main_commands = _commands(base_resources(), init=False)
    assert main_commands == set(procfile.values())
    assert _commands(base_resources(), init=True) == {"llmq db wait --timeout 600"}


# --- environment, ConfigMap and Secret --------------------------------------------------------


@pytest.mark.parametrize("target", [BASE, *OVERLAYS], ids=lambda p: p.name)
def test_every_environment_variable_is_one_llmq_reads(target: Path) -> None:
    known = settings_env_names() | GUNICORN_ENV | PENDING_SETTINGS
    resources = base_resources() if target == BASE else rendered(target)
    names = set(of_kind(resources, "ConfigMap")["llmq-config"]["data"])
    for _, container in containers(resources):
        names |= {env["name"] for env in container.get("env", [])}
    unknown = {n for n in names if n not in known and not PROVIDER_ENV.match(n)}
    assert not unknown, f"not read by llmq: {sorted(unknown)}"
    secret_keys = set(_secret_example()["stringData"])
    assert not (secret_keys - KEDA_ONLY_SECRET_KEYS) - known


def test_every_secret_and_config_map_reference_exists() -> None:
    secret_keys = set(_secret_example()["stringData"])
    for workload, container in containers(base_resources()):
        for source in container.get("envFrom", []):
            assert source == {"configMapRef": {"name": "llmq-config"}}, workload
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                assert ref["name"] == "llmq-secrets", (workload, env)
                assert ref["key"] in secret_keys, (workload, env)
    for auth in of_kind(base_resources(), "TriggerAuthentication").values():
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] == "llmq-secrets" and ref["key"] in secret_keys, ref


def test_the_example_secret_and_config_map_are_settings_llmq_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**_config_map(), **_secret_example()["stringData"]}.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    # DATABASE_URL is kept in the plain postgresql:// form, which KEDA's postgresql scaler reads
    # too; llmq selects psycopg 3 from it.
    assert _secret_example()["stringData"]["DATABASE_URL"].startswith("postgresql://")
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.api_host == "0.0.0.0"  # the probes reach the pod's address
    assert settings.flower_basic_auth  # Flower listens beyond loopback only with it


def test_only_the_pods_that_need_a_secret_get_it() -> None:
    got = {
        workload: {e["name"] for e in c.get("env", [])}
        for workload, c in containers(base_resources())
        if c["name"] not in ("wait-for-schema",)
    }
    assert "FLOWER_BASIC_AUTH" in got["llmq-flower"]
    assert all("FLOWER_BASIC_AUTH" not in names for w, names in got.items() if w != "llmq-flower")
    provider_keys = {"OPENAI_API_KEY", "ANTHROPIC_API_KEY"}
    assert {w for w, names in got.items() if provider_keys <= names} == {"llmq-api", "llmq-worker-llm"}


# --- probes and ports -------------------------------------------------------------------------


@pytest.fixture
def flask_app(tmp_path: Path) -> Iterator[Flask]:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path}/llmq.db", redis_url=REDIS_URL))
    try:
        yield app
    finally:
        app.extensions["llmq.db"].dispose()
        app.extensions["llmq.redis"].close()
        configure_celery(get_settings())  # create_app pointed the process's Celery app at it


def _probe_paths(container: Resource) -> set[str]:
    return {
        container[probe]["httpGet"]["path"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
        if probe in container
    }


def test_the_api_probes_are_routes_of_the_flask_app(flask_app: Flask) -> None:
    (api,) = of_kind(base_resources(), "Deployment")["llmq-api"]["spec"]["template"]["spec"]["containers"]
    routes = {rule.rule for rule in flask_app.url_map.iter_rules()}
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert _probe_paths(api) <= routes
    settings = Settings(api_port=int(_config_map()["LLMQ_API_PORT"]))
    assert api["ports"] == [{"name": "http", "containerPort": settings.api_port}]


def test_the_flower_probes_are_a_route_flower_serves_without_credentials() -> None:
    from flower.urls import handlers

    (flower,) = of_kind(base_resources(), "Deployment")["llmq-flower"]["spec"]["template"]["spec"][
        "containers"
    ]
    routes = {}
    for spec in handlers:
        pattern, handler = (
            (spec[0], spec[1]) if isinstance(spec, tuple) else (spec.regex.pattern, spec.handler_class)
        )
        routes[pattern.rstrip("$")] = handler
    assert _probe_paths(flower) == {"/healthcheck"}
    # a route, and one whose GET tornado's @authenticated does not wrap (no basic auth asked)
    assert not hasattr(routes["/healthcheck"].get, "__wrapped__")
    assert hasattr(routes["/api/workers"].get, "__wrapped__")  # as a protected one is
    assert flower["ports"] == [{"name": "http", "containerPort": int(_config_map()["FLOWER_PORT"])}]


def test_services_select_their_deployments_pods() -> None:
    resources = base_resources()
    deployments = of_kind(resources, "Deployment")
    for name, service in of_kind(resources, "Service").items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        ports = {
            p["name"] for c in deployments[name]["spec"]["template"]["spec"]["containers"] for p in c["ports"]
        }
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


# --- the image --------------------------------------------------------------------------------


def test_the_image_is_the_one_docker_compose_builds() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    compose_image = compose["x-llmq"]["image"]
    assert compose["x-llmq"]["build"] == "."
    images = {c["image"] for _, c in containers(base_resources())}
    assert images == {compose_image}
    name = compose_image.split(":")[0]
    for overlay in OVERLAYS:
        kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
        assert {i["name"] for i in kustomization.get("images", [])} <= {name}
    assert (BASE / "kustomization.yaml").exists()
