"""The manifests fit how llmq behaves when it runs: the grace periods cover the warm shutdown the
settings allow, the autoscaler reads the Redis list job messages really land in and the
database the pods use, beat stays single, disruptions take one pod at a time, the migration runs
before new code, and the resources are those BENCHMARKS.md measured."""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
import yaml
from celery import Celery

from llmq.api import gunicorn_conf
from llmq.config.settings import Settings
from llmq.tasks.app import LLM_QUEUE, celery_config
from llmq.tasks.enqueue import SENT_AT_HEADER
from llmq.tasks.shutdown import warm_shutdown_s
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

MIB = {"Mi": 1, "Gi": 1024}


def _settings_of_the_pods(
    monkeypatch: pytest.MonkeyPatch, resources: list[Resource] | None = None
) -> Settings:
    """The Settings an llmq process of these manifests runs with: the ConfigMap and the example
    Secret in its environment."""
    (secret,) = load_yaml_documents(SECRET_EXAMPLE)
    config = of_kind(resources or base_resources(), "ConfigMap")["llmq-config"]["data"]
    for name, value in {**config, **secret["stringData"]}.items():
        monkeypatch.setenv(name, value)
    return Settings()


def _deployment(name: str) -> Resource:
    return of_kind(base_resources(), "Deployment")[name]


def _queues(container: Resource) -> str:
    command = container["command"]
    return str(command[command.index("--queues") + 1])


# --- graceful termination ---------------------------------------------------------------------


@pytest.mark.parametrize("target", [BASE, *OVERLAYS], ids=lambda p: p.name)
@pytest.mark.parametrize("name", ["llmq-worker-llm", "llmq-worker-webhooks"])
def test_worker_grace_period_covers_the_warm_shutdown(
    name: str, target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resources = base_resources() if target == BASE else rendered(target)
    settings = _settings_of_the_pods(monkeypatch, resources)
    spec = of_kind(resources, "Deployment")[name]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    needed = warm_shutdown_s(settings, _queues(container))
    assert needed > 0
    assert spec["terminationGracePeriodSeconds"] >= needed, (name, needed)


def test_the_warm_shutdown_bound_follows_the_settings() -> None:
    short = Settings(worker_shutdown_wait_s=5, webhook_timeout_s=2)
    long = Settings(worker_shutdown_wait_s=50, webhook_timeout_s=30)
    for queues in ("llm", "webhooks", "llm,webhooks"):
        assert warm_shutdown_s(long, queues) > warm_shutdown_s(short, queues)
    assert warm_shutdown_s(short, "llm,webhooks") >= warm_shutdown_s(short, "llm")


def test_compose_stop_grace_periods_cover_the_warm_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings_of_the_pods(monkeypatch)
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("worker", "webhooks"):
        command = services[name]["command"]
        grace = int(re.fullmatch(r"(\d+)s", services[name]["stop_grace_period"]).group(1))  # type: ignore[union-attr]
        assert grace >= warm_shutdown_s(settings, command[command.index("--queues") + 1]), name


def test_api_grace_period_covers_prestop_and_gunicorn_graceful_timeout() -> None:
    spec = _deployment("llmq-api")["spec"]["template"]["spec"]
    (api,) = spec["containers"]
    sleep = api["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] >= int(sleep[1]) + gunicorn_conf.graceful_timeout
    # the pod's endpoints are still drained when gunicorn stops accepting: a preStop is there
    assert int(sleep[1]) >= 5


def test_rollouts_never_take_capacity_away_first() -> None:
    for name in ("llmq-api", "llmq-worker-llm", "llmq-worker-webhooks"):
        strategy = _deployment(name)["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0


# --- the autoscaler ---------------------------------------------------------------------------


def _scaled() -> Resource:
    return of_kind(base_resources(), "ScaledObject")["llmq-worker-llm"]


def _trigger(name: str) -> Resource:
    (trigger,) = [t for t in _scaled()["spec"]["triggers"] if t.get("name") == name]
    return trigger


def test_keda_owns_the_llm_workers_replicas() -> None:
    spec = _scaled()["spec"]
    assert spec["scaleTargetRef"] == {"name": "llmq-worker-llm"}
    assert "replicas" not in _deployment("llmq-worker-llm")["spec"], "an apply would fight the autoscaler"
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    assert spec["cooldownPeriod"] > 0
    down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300  # each pod removed hands its calls back


def test_the_formula_adds_backlog_parked_due_and_running(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _scaled()["spec"]
    names = {t["name"] for t in spec["triggers"]}
    assert names == {"backlog", "due", "running"}
    modifiers = spec["advanced"]["scalingModifiers"]
    assert set(re.findall(r"[a-z_]+", modifiers["formula"])) == names
    assert modifiers["formula"].replace(" ", "") == "backlog+due+running"
    # a pod's share stays below what one worker process takes, so each has room for a burst
    settings = _settings_of_the_pods(monkeypatch)
    assert 0 < float(modifiers["target"]) < settings.worker_max_in_flight
    assert {t["type"] for t in spec["triggers"]} == {"redis", "postgresql"}


def test_the_backlog_trigger_reads_the_list_job_messages_land_in(rdb: redis.Redis) -> None:
    """Publish a job message the way the API does (the same Celery configuration), to a Redis
    database numbered as the trigger's, and find it in the list the trigger watches there."""
    metadata = _trigger("backlog")["metadata"]
    assert metadata["listName"] == LLM_QUEUE
    server = urlsplit(REDIS_URL)
    host, port, db = server.hostname or "127.0.0.1", server.port or 6379, int(metadata["databaseIndex"])
    probe = Celery("k8s-probe", set_as_current=False)
    probe.conf.update(celery_config(Settings(redis_url=f"redis://{host}:{port}/{db}")))
    client = redis.Redis(host=host, port=port, db=db)
    try:
        client.delete(metadata["listName"])
        probe.send_task(
            "llmq.generate", args=["job_probe"], queue=LLM_QUEUE, headers={SENT_AT_HEADER: time.time()}
        )
        assert client.llen(metadata["listName"]) == 1
    finally:
        probe.close()
        client.delete(metadata["listName"])
        client.close()


def test_the_backlog_trigger_names_the_redis_of_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    metadata = _trigger("backlog")["metadata"]
    broker = urlsplit(_settings_of_the_pods(monkeypatch).broker_url)
    assert metadata["address"] == f"{broker.hostname}:{broker.port}"
    assert metadata["databaseIndex"] == broker.path.lstrip("/")
    assert metadata["enableTLS"] == ("true" if broker.scheme == "rediss" else "false")
    (secret,) = load_yaml_documents(SECRET_EXAMPLE)
    assert secret["stringData"]["REDIS_PASSWORD"] == broker.password


def test_the_postgres_triggers_read_the_database_of_database_url() -> None:
    auths = of_kind(base_resources(), "TriggerAuthentication")
    for name in ("due", "running"):
        trigger = _trigger(name)
        (ref,) = auths[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]
        assert (ref["parameter"], ref["key"]) == ("connection", "DATABASE_URL")
        assert trigger["metadata"]["query"].lower().startswith("select count(*) from jobs where ")
    assert "enqueued_at is null" in _trigger("due")["metadata"]["query"].lower()


# --- single beat, disruption budgets, migrations ----------------------------------------------


def test_beat_is_one_replica_never_two_at_once() -> None:
    spec = _deployment("llmq-beat")["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}


def test_every_scalable_workload_has_a_disruption_budget_that_selects_it() -> None:
    resources = base_resources()
    deployments = of_kind(resources, "Deployment")
    covered = set()
    for pdb in of_kind(resources, "PodDisruptionBudget").values():
        selector = pdb["spec"]["selector"]["matchLabels"]
        matched = [
            n
            for n, d in deployments.items()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, (pdb["metadata"]["name"], matched)
        assert pdb["spec"]["maxUnavailable"] == 1  # a drain of a single replica still goes through
        covered |= set(matched)
    assert covered == {"llmq-api", "llmq-worker-llm", "llmq-worker-webhooks"}


def test_the_migration_runs_once_and_new_code_waits_for_it() -> None:
    resources = base_resources()
    (job,) = of_kind(resources, "Job").values()
    (migrate,) = job["spec"]["template"]["spec"]["containers"]
    assert migrate["command"] == ["llmq", "db", "upgrade"]
    for name, deployment in of_kind(resources, "Deployment").items():
        spec = deployment["spec"]["template"]["spec"]
        uses_database = any(e["name"] == "DATABASE_URL" for c in spec["containers"] for e in c.get("env", []))
        waits = [c["command"] for c in spec.get("initContainers", [])]
        assert waits == ([["llmq", "db", "wait", "--timeout", "600"]] if uses_database else []), name


# --- resources, from BENCHMARKS.md ------------------------------------------------------------


def _mib(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * MIB[unit]


def _measured_rss_mib() -> dict[str, float]:
    """The per-process RSS figures of BENCHMARKS.md's memory target line."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    line = re.search(r"two LLM workers (\d+) MiB, webhook worker (\d+), beat (\d+)", text)
    assert line, "BENCHMARKS.md's memory line changed: re-size deploy/k8s from the new figures"
    api = re.search(r"\| 2 \(the default\) \|[^|]*\|[^|]*\| (\d+) \|", text)
    assert api, "BENCHMARKS.md's API memory table changed: re-size deploy/k8s from the new figures"
    llm, webhooks, beat = (float(x) for x in line.groups())
    return {
        "llmq-worker-llm": llm / 2,
        "llmq-worker-webhooks": webhooks,
        "llmq-beat": beat,
        "llmq-api": float(api.group(1)),
    }


def test_every_container_requests_cpu_and_memory_and_is_memory_bounded() -> None:
    for name, container in containers(base_resources()):
        resources = container["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys(), (name, container["name"])
        assert _mib(resources["limits"]["memory"]) >= _mib(resources["requests"]["memory"]), name
        assert "cpu" not in resources.get("limits", {}), (
            "no CPU limits: throttling stalls every call in flight"
        )


def test_memory_requests_cover_the_measured_rss() -> None:
    measured = _measured_rss_mib()
    for name, rss in measured.items():
        (container,) = _deployment(name)["spec"]["template"]["spec"]["containers"]
        assert _mib(container["resources"]["requests"]["memory"]) >= rss, (name, rss)


# The parameters KEDA's scalers read (keda.sh, "Scalers": Redis Lists and PostgreSQL; the CRD
# types trigger metadata only as strings, so a misspelt name would pass the schema and be ignored).
KEDA_TRIGGER_PARAMETERS = {
    "redis": {
        "metadata": {
            "address", "host", "port", "usernameFromEnv", "passwordFromEnv", "listName", "listLength",
            "activationListLength", "enableTLS", "unsafeSsl", "databaseIndex", "addressFromEnv",
            "hostFromEnv", "portFromEnv",
        },
        "auth": {
            "address", "host", "port", "username", "password", "tls", "ca", "cert", "key", "keyPassword",
        },
        "required": {"listName", "listLength"},
    },
    "postgresql": {
        "metadata": {
            "connectionFromEnv", "host", "port", "userName", "passwordFromEnv", "dbName", "sslmode",
            "query", "targetQueryValue", "activationTargetQueryValue",
        },
        "auth": {"connection", "password", "host", "port", "userName", "dbName", "sslmode"},
        "required": {"query", "targetQueryValue"},
    },
}  # fmt: skip


def test_every_trigger_parameter_is_one_its_scaler_reads() -> None:
    auths = of_kind(base_resources(), "TriggerAuthentication")
    for trigger in _scaled()["spec"]["triggers"]:
        known = KEDA_TRIGGER_PARAMETERS[trigger["type"]]
        assert set(trigger["metadata"]) <= known["metadata"], trigger["name"]
        assert known["required"] <= set(trigger["metadata"]), trigger["name"]
        auth = auths[trigger["authenticationRef"]["name"]]["spec"]
        assert {ref["parameter"] for ref in auth["secretTargetRef"]} <= known["auth"], trigger["name"]


def test_the_api_and_the_webhooks_worker_share_the_batch_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API writes uploaded batch files and serves outputs; the webhooks worker expands the
    inputs and writes the outputs: every pod of both mounts one ReadWriteMany volume where
    LLMQ_FILES_DIR points."""
    resources = base_resources()
    files_dir = str(_settings_of_the_pods(monkeypatch, resources).files_root)
    (claim,) = of_kind(resources, "PersistentVolumeClaim").values()
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for name in ("llmq-api", "llmq-worker-webhooks"):
        pod = _deployment(name)["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        (container,) = pod["containers"]
        mounts = [m for m in container["volumeMounts"] if m["mountPath"] == files_dir]
        assert len(mounts) == 1, (name, container["volumeMounts"])
        volume = volumes[mounts[0]["name"]]
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"], name
