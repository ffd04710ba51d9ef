"""Scenario 4: the webhook receiver is down while 200 jobs complete and comes back after ~8 s
(later while fewer than 150 jobs have ended, at most ~16 s: inside the compressed retry schedule,
whose 10 attempts span 27 s). Every event is delivered; every retry of an event carries the event's one
``webhook-id`` and the same body; the receiver, deduping by ``webhook-id``, acts once per event.

Back up, the receiver answers 500 to the first delivery of each event, so that every event is
seen at least twice by the receiver too."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from llmq.models.tables import WebhookDelivery, WebhookEvent
from tests.faults.checks import FINAL, wait_final
from tests.faults.scenario import Scenario

pytestmark = [pytest.mark.integration, pytest.mark.faults]

JOBS = 200
DOWN_S = 8.0
MAX_DOWN_S = 16.0


def test_every_event_is_delivered_once_the_receiver_is_back_with_one_webhook_id_per_event(
    make_scenario: Callable[..., Scenario],
) -> None:
    scenario = make_scenario(latency_s=0.3)
    scenario.warm_up(("a",))
    scenario.stop_receiver()
    down_at = time.monotonic()
    report = scenario.submit_many(JOBS, rate_per_s=50)
    assert len(report.accepted_ids) == JOBS, f"every submit is accepted: {report.by_status()}"

    def ended() -> int:
        return sum(1 for s in wait_final(scenario, report.accepted_ids, timeout=0).values() if s in FINAL)

    while ended() < 150 and time.monotonic() - down_at < MAX_DOWN_S:
        time.sleep(0.5)
    time.sleep(max(0.0, DOWN_S - (time.monotonic() - down_at)))
    final_while_down = ended()
    down_s = round(time.monotonic() - down_at, 1)
    scenario.start_receiver(fail_first_per_id=1)

    figures = scenario.check_invariants(
        report.accepted_ids,
        extra={"receiver_down_s": down_s, "jobs_final_while_receiver_down": final_while_down},
    )

    with scenario.db.session() as session:
        ours = select(WebhookEvent.id).where(WebhookEvent.job_id.in_(report.accepted_ids))
        attempts_per_event = Counter(
            dict(
                session.execute(
                    select(WebhookDelivery.event_id, func.count())
                    .where(WebhookDelivery.event_id.in_(ours))
                    .group_by(WebhookDelivery.event_id)
                ).all()
            )
        )
        met_closed_port = set(
            session.scalars(
                select(WebhookDelivery.event_id)
                .where(WebhookDelivery.event_id.in_(ours), WebhookDelivery.status_code.is_(None))
                .distinct()
            )
        )
    seen_twice = sum(1 for n in Counter(d.webhook_id for d in scenario.deliveries()).values() if n >= 2)
    print(
        f"events that met the closed port: {len(met_closed_port)}, seen twice by the receiver: {seen_twice}"
    )
    # The outage hit events under load, each of them was retried, and (by the invariants above)
    # every delivery of an event carried its one webhook-id and the same body.
    assert len(met_closed_port) >= 50, (
        f"the outage was felt: {len(met_closed_port)} events met the closed port"
    )
    assert all(attempts_per_event[e] >= 2 for e in met_closed_port), "and were retried"
    assert seen_twice >= JOBS - 5, "the receiver saw each event at least twice, under one webhook-id"
    assert figures["webhook_effects"] == JOBS
