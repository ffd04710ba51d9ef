"""The shipped Prometheus and Grafana files (``deploy/``) hold together: the rules and the config
pass ``promtool`` (Debian's ``prometheus`` package; without it, a structural check with PyYAML),
every metric the dashboard and the alerts name is one llmq exports, and docker-compose.yml mounts
the files where the configs look for them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric

import llmq.api.metrics
import llmq.workers.metrics  # noqa: F401 - registers the workers' metrics
from llmq.api.fleet import fleet_families
from llmq.api.metrics import usage_families

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "llmq-dashboard.json"
METRIC = re.compile(r"\bllmq_[a-z0-9_]+\b")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}


def _series_names(family: Metric) -> set[str]:
    suffixes = SUFFIXES.get(family.type, ("",))
    return {family.name + suffix for suffix in suffixes}


def exported_names() -> set[str]:
    """Every series name a process of llmq can export: the registered metrics (workers' and the
    API's own) and the families the API's scrape-time collectors yield."""
    names: set[str] = set()
    families = [*REGISTRY.collect(), *fleet_families().values(), *usage_families()]
    for family in families:
        if family.name.startswith("llmq_"):
            names |= _series_names(family)
    return names


def _rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (apt-get install prometheus) absent")
def test_promtool_accepts_rules_and_config() -> None:
    for argv in (["check", "rules", str(RULES)], ["check", "config", str(CONFIG)]):
        done = subprocess.run(["promtool", *argv], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


def test_rules_are_well_formed() -> None:
    rules = _rules()
    names = {rule["alert"] for rule in rules}
    assert {
        "LlmqBreakerOpen",
        "LlmqQueueOldestTooOld",
        "LlmqWebhookFailureRatio",
        "LlmqBudgetNearlySpent",
    } <= names
    for rule in rules:
        assert rule["expr"].strip() and rule["annotations"]["summary"]
        assert rule["expr"].count("(") == rule["expr"].count(")")


def test_every_metric_named_is_exported() -> None:
    exported = exported_names()
    named = {
        m for expr in [*(r["expr"] for r in _rules()), *_dashboard_exprs()] for m in METRIC.findall(expr)
    }
    assert named, "the dashboard and rules name no llmq metric"
    assert named - exported == set(), f"named but never exported: {sorted(named - exported)}"


def test_exported_names_follow_the_conventions() -> None:
    exported = exported_names()
    assert {
        "llmq_provider_call_duration_seconds_bucket",
        "llmq_provider_time_to_first_token_seconds_bucket",
        "llmq_provider_tokens_total",
        "llmq_provider_cost_usd_total",
        "llmq_attempts_total",
        "llmq_retries_total",
        "llmq_jobs_submitted_total",
        "llmq_jobs_ended_total",
        "llmq_calls_in_flight",
        "llmq_queue_depth",
        "llmq_queue_oldest_age_seconds",
        "llmq_jobs_parked",
        "llmq_breaker_state",
        "llmq_ratelimit_saturation_ratio",
        "llmq_budget_used_ratio",
        "llmq_webhook_deliveries_total",
        "llmq_webhook_delivery_duration_seconds_bucket",
    } <= exported
    labels = {
        label for family in REGISTRY.collect() if family.name.startswith("llmq_") for label in _labels(family)
    }
    assert not labels & {"job_id", "user", "user_id", "request_id"}


def _labels(family: Metric) -> set[str]:
    collector = REGISTRY._names_to_collectors.get(family.name)
    return set(getattr(collector, "_labelnames", ()))


def test_dashboard_has_the_panels_and_one_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("throughput", "latency", "errors by type", "cost per hour", "queue depth", "breaker"):
        assert topic in titles
    source = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = source["datasources"][0]["uid"]
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {uid}


def test_compose_mounts_the_files_the_configs_read() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    config = yaml.safe_load(CONFIG.read_text())
    volumes = [v for v in services["prometheus"]["volumes"] if v.startswith("./")]
    mounts = {host: container for host, container, _ in (v.split(":") for v in volumes)}
    assert all((ROOT / host).exists() for host in mounts), mounts
    # rule_files are read beside the config: both must land in the config's directory.
    assert {str(Path(c).parent) for c in mounts.values()} == {"/etc/prometheus"}
    assert {"prometheus.yml", *config["rule_files"]} <= {Path(c).name for c in mounts.values()}
    grafana = [v for v in services["grafana"]["volumes"] if v.startswith("./")]
    assert all((ROOT / v.split(":")[0]).exists() for v in grafana)
    # Every scraped service exists and serves its metrics on the port Prometheus scrapes.
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for job, service in (("llmq-worker", "worker"), ("llmq-webhooks", "webhooks")):
        sd = jobs[job]["dns_sd_configs"][0]
        assert sd["names"] == [service]
        assert str(sd["port"]) == services[service]["environment"]["LLMQ_METRICS_PORT"]
    assert jobs["llmq-api"]["static_configs"][0]["targets"] == ["api:8000"]
