"""Exact cost and usage, end to end: real worker processes call the simulator through the official
OpenAI and Anthropic SDKs (streamed and not), the simulator reports prompt-cache tokens the way
each API does, and the costs, the attempts, the rollup, ``GET /v1/usage``, ``llmq usage`` and
``/metrics`` must all tell the same story.

The workers of this module use their own broker (``LLMQ_TEST_USAGE_REDIS_URL``, default Redis
db 10) and a providers file that prices this module's models, so the session worker (which knows
neither) never takes their jobs.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections import defaultdict
from collections.abc import Iterator
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from llmq.api.app import create_app
from llmq.config.settings import Settings
from llmq.models.base import utcnow
from llmq.models.db import Database
from llmq.models.tables import Attempt, Job
from llmq.models.tenants import IssuedKey, create_key
from llmq.tasks.app import configure_celery
from tests.integration.conftest import SimulatorControl, wait_for_status
from tests.integration.services import VENV_BIN, settings_env, start_llm_worker, stop_process

RUN = uuid.uuid4().hex[:6]
OPENAI = f"openai/usage-{RUN}"
ANTHROPIC = f"anthropic/usage-{RUN}"
OPENAI_DROP = f"openai/usage-drop-{RUN}"
ANTHROPIC_DROP = f"anthropic/usage-drop-{RUN}"
# input, output, cached input, cache write: USD per million tokens
PRICES = {
    OPENAI: ("1.00", "2.00", "0.25", None),
    OPENAI_DROP: ("1.00", "2.00", "0.25", None),
    ANTHROPIC: ("3.00", "15.00", "0.30", "3.75"),
    ANTHROPIC_DROP: ("3.00", "15.00", "0.30", "3.75"),
}
LONG = 4200  # characters: ceil(4200 / 4) + 3 = 1053 tokens, over the simulator's 1024 minimum
PREFIX_TOKENS = 1053


def _providers_file(path: Path) -> Path:
    tables = []
    for model, (inp, out, cached, write) in PRICES.items():
        table = f'[models."{model}"]\ninput_usd_per_mtok = {inp}\noutput_usd_per_mtok = {out}\n'
        table += f"cached_input_usd_per_mtok = {cached}\n"
        if write:
            table += f"cache_write_usd_per_mtok = {write}\n"
        tables.append(table)
    path.write_text(
        '[prices]\ntaken_on = 2026-01-15\n\n[usage]\nmetadata_keys = ["team"]\n\n' + "\n".join(tables)
    )
    return path


def expected_cost(model: str, prompt: int, completion: int, cached: int, write: int) -> Decimal:
    inp, out, cached_price, write_price = (Decimal(p) if p else None for p in PRICES[model])
    assert inp is not None and out is not None and cached_price is not None
    cost = (
        (prompt - cached - write) * inp
        + cached * cached_price
        + write * (write_price or inp)
        + completion * out
    ) / Decimal(1_000_000)
    return cost.quantize(Decimal("0.00000001"), rounding=ROUND_HALF_EVEN)


@pytest.fixture(scope="module")
def usage_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    providers = _providers_file(tmp_path_factory.mktemp("usage-providers") / "providers.toml")
    redis_url = os.environ.get("LLMQ_TEST_USAGE_REDIS_URL", settings.broker_url.rsplit("/", 1)[0] + "/10")
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    return settings.model_copy(update={"redis_url": redis_url, "providers_file": providers})


@pytest.fixture(scope="module")
def usage_app(usage_settings: Settings, settings: Settings, database: Database) -> Iterator[Flask]:
    app = create_app(usage_settings)
    app.testing = True
    yield app
    app.extensions["llmq.db"].dispose()
    configure_celery(settings)


@pytest.fixture
def api(usage_app: Flask) -> FlaskClient:
    return usage_app.test_client()


def _worker(usage_settings: Settings, logs_dir: Path, stream: bool) -> Iterator[str]:
    name = f"usage-{'stream' if stream else 'plain'}-{RUN}@127.0.0.1"
    env = {
        "LLMQ_PROVIDERS_FILE": str(usage_settings.providers_file),
        "LLMQ_STREAM": str(stream).lower(),
    }
    proc = start_llm_worker(usage_settings, name, logs_dir / f"{name}.log", env)
    try:
        yield name
    finally:
        stop_process(proc)


@pytest.fixture(scope="class")
def streaming_worker(
    usage_settings: Settings, simulator: str, database: Database, logs_dir: Path
) -> Iterator[str]:
    yield from _worker(usage_settings, logs_dir, stream=True)


@pytest.fixture(scope="class")
def plain_worker(
    usage_settings: Settings, simulator: str, database: Database, logs_dir: Path
) -> Iterator[str]:
    yield from _worker(usage_settings, logs_dir, stream=False)


@pytest.fixture
def account(database: Database) -> IssuedKey:
    with database.transaction() as session:
        return create_key(
            session, tenant_name=f"usage-{uuid.uuid4().hex[:8]}", now=utcnow(), tier="unlimited"
        )


def _auth(account: IssuedKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {account.api_key}"}


def _run(
    api: FlaskClient, account: IssuedKey, model: str, system: str, question: str, **extra: Any
) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        **extra,
    }
    response = api.post("/v1/jobs", json=body, headers=_auth(account))
    assert response.status_code == 202, response.get_json()
    return wait_for_status(api, _auth(account), response.get_json()["id"], {"completed", "failed"})


def _attempts(api: FlaskClient, account: IssuedKey, job_id: str) -> list[dict[str, Any]]:
    body = api.get(f"/v1/jobs/{job_id}/attempts", headers=_auth(account)).get_json()
    return list(body["data"])


def _prompt_cache_is_reported_and_priced(api: FlaskClient, account: IssuedKey, model: str) -> None:
    system = f"{uuid.uuid4().hex} " + "x" * (LONG - 33)
    assert len(system) == LONG
    first = _run(api, account, model, system, "first question")
    second = _run(api, account, model, system, "second question")
    assert first["status"] == second["status"] == "completed"
    anthropic = model.startswith("anthropic/")
    for job, cached, written in (
        (first, 0, PREFIX_TOKENS if anthropic else 0),  # first sight: a cache write (Anthropic bills it)
        (second, PREFIX_TOKENS, 0),  # seen again: a cache read
    ):
        usage = job["usage"]
        assert usage["cached_tokens"] == cached and usage["cache_write_tokens"] == written
        # prompt_tokens counts every input token, the cached ones included, for both providers
        assert usage["prompt_tokens"] == PREFIX_TOKENS + 7
        (attempt,) = _attempts(api, account, job["id"])
        assert attempt["cached_tokens"] == cached and attempt["cache_write_tokens"] == written
        cost = expected_cost(model, usage["prompt_tokens"], usage["completion_tokens"], cached, written)
        assert Decimal(str(attempt["cost_usd"])) == cost
        assert Decimal(str(job["cost_usd"])) == cost
    assert second["cost_usd"] < first["cost_usd"]


def _billed_failure_is_counted(
    api: FlaskClient, sim: SimulatorControl, database: Database, account: IssuedKey, model: str
) -> None:
    bare = model.split("/", 1)[1]  # the simulator sees the model without its provider
    sim.script(bare, [{"fault": "stream_drop", "after_words": 3}])  # then normal answers
    job = _run(api, account, model, "a short system prompt", "tell me more")
    assert job["status"] == "completed" and job["attempts"] == 2
    failed, succeeded = _attempts(api, account, job["id"])
    assert failed["outcome"] == "retryable_error" and failed["error_type"] == "stream_error"
    # the provider billed the prompt and the three words it had generated
    assert failed["completion_tokens"] == 3 and failed["prompt_tokens"] > 0
    if model.startswith("anthropic/"):  # message_start said the exact prompt; OpenAI's is estimated
        assert failed["prompt_tokens"] == succeeded["prompt_tokens"]
    assert Decimal(str(failed["cost_usd"])) == expected_cost(model, failed["prompt_tokens"], 3, 0, 0) > 0
    total = Decimal(str(failed["cost_usd"])) + Decimal(str(succeeded["cost_usd"]))
    assert Decimal(str(job["cost_usd"])) == total  # the job costs what all its billed attempts cost
    report = api.get("/v1/usage?group_by=model", headers=_auth(account)).get_json()
    (row,) = [r for r in report["data"] if r["model"] == model]
    assert row["calls"] == 2 and row["failures"] == 1
    assert row["completion_tokens"] == 3 + succeeded["completion_tokens"]
    assert Decimal(str(row["cost_usd"])) == total


@pytest.mark.usefixtures("streaming_worker")
class TestStreamed:
    def test_openai_cached_tokens_are_reported_and_priced(self, api: FlaskClient, account: IssuedKey) -> None:
        _prompt_cache_is_reported_and_priced(api, account, OPENAI)

    def test_anthropic_cache_read_and_write_are_reported_and_priced(
        self, api: FlaskClient, account: IssuedKey
    ) -> None:
        _prompt_cache_is_reported_and_priced(api, account, ANTHROPIC)

    @pytest.mark.parametrize("model", [OPENAI_DROP, ANTHROPIC_DROP], ids=["openai", "anthropic"])
    def test_a_stream_broken_after_output_is_billed_in_the_attempt_job_and_rollup(
        self, model: str, api: FlaskClient, sim: SimulatorControl, database: Database, account: IssuedKey
    ) -> None:
        _billed_failure_is_counted(api, sim, database, account, model)

    def test_usage_groups_equal_the_sums_of_the_attempts(
        self, api: FlaskClient, database: Database, account: IssuedKey, usage_settings: Settings
    ) -> None:
        for i, (model, user, team) in enumerate(
            [
                (OPENAI, "ann", "red"),
                (OPENAI, "bob", "red"),
                (OPENAI, None, "blue"),
                (ANTHROPIC, "ann", None),
                (ANTHROPIC, "bob", "blue"),
            ]
        ):
            extra: dict[str, Any] = {"metadata": {"team": team, "doc": f"d{i}"} if team else {"doc": f"d{i}"}}
            if user:
                extra["user"] = user
            assert _run(api, account, model, "system", f"question {i}", **extra)["status"] == "completed"
        with database.session() as session:
            rows = session.execute(
                select(Job.model, Job.end_user, Job.api_key_id, Job.metadata_, Attempt)
                .join(Attempt, Attempt.job_id == Job.id)
                .where(Job.tenant_id == account.tenant_id)
            ).all()
        day = utcnow().date().isoformat()
        expected: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(lambda: defaultdict(int))
        for _, user, key, metadata, attempt in rows:
            group = (day, attempt.model, user, key, (metadata or {}).get("team"))
            sums = expected[group]
            sums["calls"] += 1
            sums["failures"] += attempt.outcome not in ("success", "discarded")
            for name in ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens"):
                sums[name] += getattr(attempt, name) or 0
            sums["cost_usd"] += attempt.cost_usd or Decimal(0)
        response = api.get(
            f"/v1/usage?from={day}&to={day}&group_by=day,model,user,key,metadata.team", headers=_auth(account)
        )
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert body["group_by"] == ["day", "model", "user", "key", "metadata.team"]
        got = {
            (r["day"], r["model"], r["user"], r["key"], r["metadata.team"]): {
                k: v for k, v in r.items() if k not in {"day", "model", "user", "key", "metadata.team"}
            }
            for r in body["data"]
        }
        assert set(got) == set(expected) and len(got) == 5
        for group, sums in expected.items():
            for name, value in sums.items():
                assert Decimal(str(got[group][name])) == Decimal(value), (group, name)
        assert body["total"]["calls"] == len(rows) == 5
        assert Decimal(str(body["total"]["cost_usd"])) == sum(
            (Decimal(v["cost_usd"]) for v in expected.values()), Decimal(0)
        )
        # The CLI answers the same from the same rollup.
        env = {**settings_env(usage_settings), "LLMQ_PROVIDERS_FILE": str(usage_settings.providers_file)}
        args = ["usage", "--tenant", account.tenant, "--from", day, "--to", day]
        out = subprocess.run(
            [str(VENV_BIN / "llmq"), *args, "--group-by", "model,user", "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        cli = json.loads(out.stdout)
        assert cli["total"] == body["total"]
        assert {(r["model"], r["user"]) for r in cli["data"]} == {(g[1], g[2]) for g in expected}
        table = subprocess.run(
            [str(VENV_BIN / "llmq"), *args], env=env, capture_output=True, text=True, check=True
        ).stdout
        assert OPENAI in table and ANTHROPIC in table and "total" in table

    def test_metrics_show_the_usage_counters_by_tenant_and_model(
        self, api: FlaskClient, account: IssuedKey
    ) -> None:
        job = _run(api, account, OPENAI, "system", "count me")
        text = api.get("/metrics").get_data(as_text=True)
        labels = f'model="{OPENAI}",tenant="{account.tenant}"'
        assert f"llmq_usage_calls_total{{{labels}}} 1.0" in text
        assert f"llmq_usage_failures_total{{{labels}}} 0.0" in text
        assert (
            f'llmq_usage_tokens_total{{{labels},type="output"}} {float(job["usage"]["completion_tokens"])}'
            in text
        )
        assert f"llmq_usage_cost_usd_total{{{labels}}} {job['cost_usd']}" in text


@pytest.mark.usefixtures("plain_worker")
class TestNotStreamed:
    def test_openai_cached_tokens_are_reported_and_priced(self, api: FlaskClient, account: IssuedKey) -> None:
        _prompt_cache_is_reported_and_priced(api, account, OPENAI)

    def test_anthropic_cache_read_and_write_are_reported_and_priced(
        self, api: FlaskClient, account: IssuedKey
    ) -> None:
        _prompt_cache_is_reported_and_priced(api, account, ANTHROPIC)


def test_usage_refuses_an_unknown_group(api: FlaskClient, account: IssuedKey) -> None:
    for group_by, says in (("metadata.doc", "team"), ("colour", "day, model, user, key")):
        response = api.get(f"/v1/usage?group_by={group_by}", headers=_auth(account))
        assert response.status_code == 422
        error = response.get_json()["error"]
        assert error["type"] == "validation_error" and says in error["message"]
    response = api.get("/v1/usage?from=2026-02-01&to=2026-01-01", headers=_auth(account))
    assert response.status_code == 422
    assert api.get("/v1/usage", headers=_auth(account)).get_json()["total"]["calls"] == 0
    assert "/v1/usage" in api.get("/openapi.json").get_json()["paths"]


def test_providers_show_prices_and_their_date(api: FlaskClient, account: IssuedKey) -> None:
    body = api.get("/v1/providers", headers=_auth(account)).get_json()
    assert body["prices_taken_on"] == "2026-01-15"
    (entry,) = [e for e in body["data"] if e["model"] == ANTHROPIC]
    assert entry["price"] == {
        "input_usd_per_mtok": 3.0,
        "output_usd_per_mtok": 15.0,
        "cached_input_usd_per_mtok": 0.3,
        "cache_write_usd_per_mtok": 3.75,
        "batch_input_usd_per_mtok": 1.5,
        "batch_output_usd_per_mtok": 7.5,
        "taken_on": "2026-01-15",
    }
