"""Fixtures of the fault tests.

``fault_stack`` (package): the shared part of the stack — Redis, simulator, API, webhook worker,
beat, receiver, database — started once, checked before every test and rebuilt if a test left it
unhealthy, stopped when the last fault test is done (Postgres always restarted if a test stopped it).

``make_scenario(latency_s=…, llm_workers=(…))`` (per test): a :class:`Scenario` with its own model,
webhook path and LLM workers; the workers are stopped after the test, and on failure the tail of
every log written during the test is printed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.scenario import Scenario
from tests.faults.stack import Stack


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"fault_report_{report.when}", report)
    path = os.environ.get("LLMQ_FAULTS_REPORT")
    if path and report.when == "call":
        errors = [line[1:].strip() for line in report.longreprtext.splitlines() if line.startswith("E ")]
        line = {
            "scenario": item.name,
            "test_outcome": report.outcome,
            "failure": errors[0][:300] if errors else None,
        }
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")
    return report


class _Holder:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.stack: Stack | None = None
        self.builds = 0

    def healthy(self) -> Stack:
        if self.stack is not None:
            problems = self.stack.problems()
            if not problems:
                return self.stack
            print(f"\nrebuilding the shared stack: {problems}")
            self.stack.close()
            self.stack = None
        self.builds += 1
        stack = Stack(self.root / f"stack{self.builds}")
        try:
            stack.start()
        except BaseException:
            print(stack.log_tails())
            stack.close()
            raise
        self.stack = stack
        return stack

    def close(self) -> None:
        if self.stack is not None:
            self.stack.close()


@pytest.fixture(scope="package")  # torn down when tests/faults is done, not at the end of the session
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Holder]:
    holder = _Holder(tmp_path_factory.mktemp("faults"))
    try:
        yield holder
    finally:
        holder.close()


@pytest.fixture
def make_scenario(request: pytest.FixtureRequest, fault_stack: _Holder) -> Iterator[Callable[..., Scenario]]:
    scenarios: list[Scenario] = []

    def make(*, latency_s: float = 0.2, llm_workers: tuple[str, ...] = ("a",)) -> Scenario:
        scenario = Scenario(fault_stack.healthy(), request.node.name, latency_s=latency_s)
        scenarios.append(scenario)
        for name in llm_workers:
            scenario.start_worker(name, wait=False)
        for name in llm_workers:
            scenario.wait_worker_ready(name)
        return scenario

    yield make

    failed = any(
        getattr(getattr(request.node, f"fault_report_{when}", None), "failed", False)
        for when in ("setup", "call")
    )
    for scenario in scenarios:
        try:
            scenario.close()
        finally:
            if failed:
                print(f"\n===== logs written during {scenario.name} =====")
                print(scenario.log_tails())
