"""Fleet-wide rate limits: the exact sliding window of rpm and tpm, and the leased semaphore,
against the machine's real Redis (database 14), hammered by real threads and processes."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from typing import Any

import redis

from llmq.config.providers_file import LimitsConfig, ModelConfig, ProvidersConfig
from llmq.workers.ratelimit import SLOT_POLL_S, SLOT_WAIT_MAX_S, RateLimiter
from llmq.workers.tokens import estimate_input_tokens, estimate_tokens
from tests.sync import done
from tests.unit.conftest import REDIS_URL


def limiter(client: redis.Redis, window_s: float, **models: ModelConfig) -> RateLimiter:
    config = ProvidersConfig(models={f"sim/{name}": cfg for name, cfg in models.items()})
    return RateLimiter(client, config, window_s=window_s)


def max_in_any_window(times: list[float], window_s: float, weights: list[int] | None = None) -> int:
    """The most (weighted) admissions whose times lie in one window (t - window_s, t]."""
    order = sorted(range(len(times)), key=lambda i: times[i])
    ts = [times[i] for i in order]
    ws = [weights[i] if weights else 1 for i in order]
    best = total = 0
    start = 0
    for end in range(len(ts)):
        total += ws[end]
        while ts[end] - ts[start] >= window_s:
            total -= ws[start]
            start += 1
        best = max(best, total)
    return best


# --- estimates (no Redis) ------------------------------------------------------------------------


def test_token_estimate_is_bytes_over_four_plus_overhead() -> None:
    messages = [{"role": "system", "content": "x" * 40}, {"role": "user", "content": "y" * 41}]
    assert estimate_input_tokens(messages) == 3 + (4 + 10) + (4 + 11)
    assert estimate_tokens(messages, 100) == estimate_input_tokens(messages) + 100
    assert estimate_tokens(messages, None, default_max_tokens=256) == estimate_input_tokens(messages) + 256


def test_token_estimate_reads_content_parts_and_wide_scripts() -> None:
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "abcd" * 5}, {"type": "text", "text": "efgh"}]}
    ]
    assert estimate_input_tokens(parts) == 3 + 4 + 6
    # Three UTF-8 bytes a character: 12 characters of CJK count as 9 tokens, not 3.
    assert estimate_input_tokens([{"role": "user", "content": "漢" * 12}]) == 3 + 4 + 9


# --- rpm and tpm -----------------------------------------------------------------------------------


def test_unlimited_model_is_always_admitted_without_redis(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 1.0, a=ModelConfig(rpm=1))
    for _ in range(5):
        admission = rl.acquire("sim/unlisted", 100)
        assert admission.allowed and admission.reservation is None
    assert rdb.keys("*") == []


def server_time(client: redis.Redis) -> float:
    seconds, micros = done(client.time())
    return seconds + micros / 1_000_000


def test_refusal_says_exactly_when_the_oldest_entry_leaves(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 1.0, a=ModelConfig(rpm=3))
    before = server_time(rdb)
    first = rl.acquire("sim/a", 1)
    assert first.allowed and first.admitted_at is not None
    assert before <= first.admitted_at <= server_time(rdb)  # the Redis clock, not ours
    assert rl.acquire("sim/a", 1).allowed and rl.acquire("sim/a", 1).allowed
    before = server_time(rdb)
    refused = rl.acquire("sim/a", 1)
    after = server_time(rdb)
    assert not refused.allowed and refused.reservation is None
    # Exactly when the first entry leaves the window, as seen by the Redis clock.
    assert first.admitted_at + 1.0 - after <= refused.retry_in_s <= first.admitted_at + 1.0 - before
    time.sleep(refused.retry_in_s)
    again = rl.acquire("sim/a", 1)
    assert again.allowed
    assert again.admitted_at is not None and again.admitted_at - first.admitted_at >= 1.0


def test_tokens_and_requests_are_checked_together(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 1.0, a=ModelConfig(rpm=10, tpm=100))
    assert rl.acquire("sim/a", 60).allowed
    assert rl.acquire("sim/a", 30).allowed
    refused = rl.acquire("sim/a", 20)  # 110 > 100: refused although rpm has room
    assert not refused.allowed and 0 < refused.retry_in_s <= 1.0
    assert rl.acquire("sim/a", 10).allowed  # fits exactly
    usage = rl.usage("sim/a")
    assert usage["rpm_used"] == 3 and usage["tpm_used"] == 100
    assert usage["rpm_limit"] == 10 and usage["tpm_limit"] == 100 and usage["window_s"] == 1.0


def test_tpm_wait_is_until_enough_tokens_leave(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 1.0, a=ModelConfig(tpm=100))
    first = rl.acquire("sim/a", 10)
    time.sleep(0.3)
    second = rl.acquire("sim/a", 80)
    assert first.admitted_at is not None and second.admitted_at is not None
    # 90 used; 50 more need the 80-token entry gone, not just the 10-token one.
    before = server_time(rdb)
    refused = rl.acquire("sim/a", 50)
    after = server_time(rdb)
    assert not refused.allowed
    assert second.admitted_at + 1.0 - after <= refused.retry_in_s <= second.admitted_at + 1.0 - before


def test_settle_replaces_the_reservation_with_the_reported_usage(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 1.0, a=ModelConfig(tpm=1000))
    reserved = estimate_tokens([{"role": "user", "content": "hello"}], 900)
    admission = rl.acquire("sim/a", reserved)
    assert admission.allowed
    assert not rl.acquire("sim/a", 200).allowed
    assert rl.settle(admission.reservation, 120) == 120 - reserved
    assert rl.usage("sim/a")["tpm_used"] == 120
    assert rl.acquire("sim/a", 200).allowed  # the freed output reservation is usable at once
    assert rl.settle(None, 50) == 0


def test_settle_after_the_window_changes_nothing(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 0.2, a=ModelConfig(tpm=100))
    admission = rl.acquire("sim/a", 50)
    time.sleep(0.25)
    assert rl.settle(admission.reservation, 500) == 0
    assert rl.usage("sim/a")["tpm_used"] == 0


def test_cancel_gives_back_a_call_never_sent(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 1.0, a=ModelConfig(rpm=1, tpm=100))
    admission = rl.acquire("sim/a", 80)
    assert not rl.acquire("sim/a", 10).allowed
    assert rl.cancel(admission.reservation)
    assert not rl.cancel(admission.reservation)
    assert rl.acquire("sim/a", 10).allowed


def test_a_call_larger_than_tpm_runs_alone(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 0.8, a=ModelConfig(tpm=100))
    small = rl.acquire("sim/a", 1)
    assert small.allowed
    assert not rl.acquire("sim/a", 500).allowed  # waits for an empty window
    time.sleep(0.85)
    big = rl.acquire("sim/a", 500)
    assert big.allowed
    assert rl.usage("sim/a")["tpm_used"] == 100  # cut to the whole budget
    assert not rl.acquire("sim/a", 1).allowed


def test_keys_expire_with_the_window(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 0.5, a=ModelConfig(rpm=5, tpm=50, concurrency=2))
    rl.acquire("sim/a", 5)
    assert rl.acquire("sim/a", 0, holder="h", lease_s=0.5).allowed
    keys = sorted(k.decode() if isinstance(k, bytes) else k for k in done(rdb.keys("*")))
    assert keys == ["llmq:rl:sim/a:log", "llmq:rl:sim/a:slots", "llmq:rl:sim/a:sum", "llmq:rl:sim/a:tok"]
    for key in keys:
        assert 0 < done(rdb.pttl(key)) <= 1500


def test_eight_threads_never_exceed_rpm_or_tpm_in_any_window(rdb: redis.Redis) -> None:
    window, rpm, tpm = 2.0, 60, 900
    rl = limiter(rdb, window, a=ModelConfig(rpm=rpm, tpm=tpm))
    admitted: list[tuple[float, int]] = []
    lock = threading.Lock()
    stop = time.monotonic() + 6.0

    def hammer(seed: int) -> None:
        n = seed
        while time.monotonic() < stop:
            n = (n * 1103515245 + 12345) % 2**31
            tokens = 1 + n % 30  # 15.5 on average: 60 requests would want ~930 > 900
            admission = rl.acquire("sim/a", tokens)
            if admission.allowed:
                assert admission.admitted_at is not None
                with lock:
                    admitted.append((admission.admitted_at, tokens))
            else:
                time.sleep(min(admission.retry_in_s, 0.01))

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    times = [t for t, _ in admitted]
    assert max_in_any_window(times, window) <= rpm
    assert max_in_any_window(times, window, [n for _, n in admitted]) <= tpm
    # Saturated, not merely refusing: three windows' worth of requests got through.
    assert len(admitted) >= 150


def _hammer_process(
    url: str, window: float, rpm: int, seconds: float, go: Any, out: multiprocessing.Queue
) -> None:
    client = redis.Redis.from_url(url)
    rl = limiter(client, window, a=ModelConfig(rpm=rpm))
    go.wait(30)
    stop = time.monotonic() + seconds
    times: list[float] = []
    while time.monotonic() < stop:
        admission = rl.acquire("sim/a", 1)
        if admission.allowed and admission.admitted_at is not None:
            times.append(admission.admitted_at)
        else:
            time.sleep(min(admission.retry_in_s, 0.005))
    out.put(times)


def test_four_processes_share_one_limit(rdb: redis.Redis) -> None:
    window, rpm = 1.0, 20
    # forkserver: children forked from a clean, single-threaded server that imported this module
    # once, so they start fast and all compete at once (after `go`).
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    go = ctx.Event()
    out: multiprocessing.Queue = ctx.Queue()
    procs = [
        ctx.Process(target=_hammer_process, args=(REDIS_URL, window, rpm, 2.0, go, out)) for _ in range(4)
    ]
    for proc in procs:
        proc.start()
    go.set()
    results = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=10)
    times = [t for result in results for t in result]
    assert max_in_any_window(times, window) <= rpm
    assert sum(1 for result in results if result) >= 2  # the processes really competed
    assert len(times) >= 2 * rpm


# --- concurrency slots -------------------------------------------------------------------------


def test_semaphore_never_exceeds_its_cap_under_twenty_threads(rdb: redis.Redis) -> None:
    cap = 5
    rl = limiter(rdb, 1.0, a=ModelConfig(concurrency=cap))
    holding = 0
    most = 0
    seen_in_redis = 0
    lock = threading.Lock()
    stop = time.monotonic() + 2.0

    def worker() -> None:
        nonlocal holding, most
        while time.monotonic() < stop:
            holder = uuid.uuid4().hex
            if not rl.acquire("sim/a", 0, holder=holder, lease_s=5).allowed:
                time.sleep(0.002)
                continue
            with lock:
                holding += 1
                most = max(most, holding)
            time.sleep(0.005)
            with lock:
                holding -= 1
            assert rl.release_slot("sim/a", holder)

    def watch() -> None:
        nonlocal seen_in_redis
        while time.monotonic() < stop:
            seen_in_redis = max(seen_in_redis, rl.usage("sim/a")["in_flight"])

    threads = [threading.Thread(target=worker) for _ in range(20)] + [threading.Thread(target=watch)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == cap  # reached, never passed
    assert seen_in_redis <= cap
    assert rl.usage("sim/a")["in_flight"] == 0


def test_a_holder_that_stops_renewing_loses_its_slot(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 1.0, a=ModelConfig(concurrency=1))
    assert rl.acquire("sim/a", 0, holder="dead-worker", lease_s=0.3).allowed
    assert not rl.acquire("sim/a", 0, holder="other", lease_s=0.3).allowed
    time.sleep(0.35)
    assert rl.acquire("sim/a", 0, holder="other", lease_s=0.3).allowed
    # The dead worker's renewal does not take the slot back: it is told it lost it.
    assert rl.renew_slot("sim/a", ["dead-worker"], lease_s=0.3) == ["dead-worker"]
    assert not rl.release_slot("sim/a", "dead-worker")
    assert rl.usage("sim/a")["in_flight"] == 1


def test_renewing_keeps_a_slot_past_its_first_lease(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 1.0, a=ModelConfig(concurrency=1))
    assert rl.acquire("sim/a", 0, holder="alive", lease_s=0.3).allowed
    for _ in range(8):  # 0.8 s in all, well past the first lease
        time.sleep(0.1)
        assert rl.renew_slot("sim/a", ["alive"], lease_s=0.3) == []
        assert not rl.acquire("sim/a", 0, holder="other", lease_s=0.3).allowed
    assert rl.acquire("sim/a", 0, holder="alive", lease_s=0.3).allowed  # re-entrant for its holder
    assert rl.release_slot("sim/a", "alive")
    assert rl.acquire("sim/a", 0, holder="other", lease_s=0.3).allowed


def test_model_without_a_cap_has_no_slots(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 1.0, a=ModelConfig(rpm=5))
    assert all(rl.acquire("sim/a", 0, holder=f"h{i}").allowed for i in range(5))
    assert rl.renew_slot("sim/a", ["h1"]) == []
    assert rdb.keys("*:slots") == []


def test_limiter_takes_its_window_and_lease_from_the_file() -> None:
    config = ProvidersConfig(limits=LimitsConfig(window_s=30, lease_s=12))
    rl = RateLimiter(redis.Redis.from_url(REDIS_URL), config)
    assert rl.window_s == 30.0 and rl.lease_s == 12.0


# --- the line: waiting jobs are served in the order they first waited ----------------------------


def _fill(rl: RateLimiter, model: str, n: int, tokens: int = 1) -> list[str]:
    """n admissions without a job id; their reservations, to free the units at will (cancel)."""
    reservations = []
    for _ in range(n):
        admission = rl.acquire(model, tokens)
        assert admission.allowed and admission.reservation is not None
        reservations.append(admission.reservation)
    return reservations


def test_waiting_jobs_take_freed_requests_in_the_order_they_joined(rdb: redis.Redis) -> None:
    # A long window: units are freed by cancelling the entries that fill it, not by the clock.
    rl = limiter(rdb, 30.0, a=ModelConfig(rpm=3))
    fill = _fill(rl, "sim/a", 3)
    for job in ("j1", "j2", "j3"):
        assert not rl.acquire("sim/a", 1, job_id=job).allowed
    assert rl.usage("sim/a")["waiting"] == 3

    rl.cancel(fill[0])  # one request free: it is j1's, whoever asks first
    assert not rl.acquire("sim/a", 1, job_id="j3").allowed
    assert not rl.acquire("sim/a", 1, job_id="j2").allowed
    first = rl.acquire("sim/a", 1, job_id="j1")
    assert first.allowed and first.ahead == 0
    rl.cancel(fill[1])
    assert not rl.acquire("sim/a", 1, job_id="j3").allowed
    assert rl.acquire("sim/a", 1, job_id="j2").allowed
    rl.cancel(fill[2])
    assert rl.acquire("sim/a", 1, job_id="j3").allowed
    assert rl.usage("sim/a")["waiting"] == 0


def test_a_waiting_job_may_take_what_nobody_ahead_of_it_needs(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 30.0, a=ModelConfig(rpm=3))
    fill = _fill(rl, "sim/a", 3)
    for job in ("j1", "j2", "j3"):
        assert not rl.acquire("sim/a", 1, job_id=job).allowed
    rl.cancel(fill[0])
    rl.cancel(fill[1])  # two free: j1's and j2's, so j2 need not wait for j1 to wake
    assert not rl.acquire("sim/a", 1, job_id="j3").allowed
    assert rl.acquire("sim/a", 1, job_id="j2").allowed
    assert rl.acquire("sim/a", 1, job_id="j1").allowed
    assert rl.usage("sim/a")["rpm_used"] == 3


def test_a_new_arrival_cannot_jump_the_line(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 30.0, a=ModelConfig(rpm=1), b=ModelConfig(concurrency=1))
    (only,) = _fill(rl, "sim/a", 1)
    waiting = rl.acquire("sim/a", 1, job_id="waiting")
    assert not waiting.allowed and waiting.ahead == 0
    rl.cancel(only)
    newcomer = rl.acquire("sim/a", 1, job_id="newcomer")
    assert not newcomer.allowed and newcomer.ahead == 1
    assert not rl.acquire("sim/a", 1).allowed  # nor a call without a job id (which never joins)
    assert rl.acquire("sim/a", 1, job_id="waiting").allowed

    # The same for a concurrency slot.
    assert rl.acquire("sim/b", 0, holder="h0", job_id="running").allowed
    assert not rl.acquire("sim/b", 0, holder="h1", job_id="waiting").allowed
    assert rl.release_slot("sim/b", "h0")
    assert not rl.acquire("sim/b", 0, holder="h2", job_id="newcomer").allowed
    assert not rl.acquire("sim/b", 0, holder="h3").allowed
    assert rl.acquire("sim/b", 0, holder="h1", job_id="waiting").allowed
    assert rl.usage("sim/b")["in_flight"] == 1


def test_the_tokens_the_jobs_ahead_want_are_kept_for_them(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 30.0, a=ModelConfig(tpm=100))
    (full,) = _fill(rl, "sim/a", 1, tokens=100)
    assert not rl.acquire("sim/a", 60, job_id="big").allowed
    assert not rl.acquire("sim/a", 30, job_id="small").allowed
    rl.cancel(full)
    assert rl.acquire("sim/a", 30, job_id="small").allowed  # 60 (big's) + 30 fit in 100
    assert not rl.acquire("sim/a", 20, job_id="late").allowed  # 30 used + 60 for big + 20 > 100
    assert rl.acquire("sim/a", 60, job_id="big").allowed
    assert rl.usage("sim/a")["tpm_used"] == 90


def test_a_job_refused_again_keeps_its_place(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 30.0, a=ModelConfig(rpm=1))
    (only,) = _fill(rl, "sim/a", 1)
    assert rl.acquire("sim/a", 1, job_id="j1").ahead == 0
    assert rl.acquire("sim/a", 1, job_id="j2").ahead == 1
    for _ in range(3):  # re-parked, and re-parked again: still where it first stood
        assert rl.acquire("sim/a", 1, job_id="j2").ahead == 1
        assert rl.acquire("sim/a", 1, job_id="j1").ahead == 0
    rl.cancel(only)
    assert not rl.acquire("sim/a", 1, job_id="j2").allowed
    assert rl.acquire("sim/a", 1, job_id="j1").allowed


def test_admission_takes_the_job_out_of_the_line(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 30.0, a=ModelConfig(rpm=1, tpm=100))
    (only,) = _fill(rl, "sim/a", 1)
    assert not rl.acquire("sim/a", 10, job_id="j1").allowed
    assert rdb.zcard("llmq:rl:sim/a:line") == 1 and rdb.hlen("llmq:rl:sim/a:want") == 1
    rl.cancel(only)
    assert rl.acquire("sim/a", 10, job_id="j1").allowed
    assert not rdb.exists("llmq:rl:sim/a:line", "llmq:rl:sim/a:due", "llmq:rl:sim/a:want")
    assert rl.usage("sim/a")["waiting"] == 0


def test_a_job_that_went_elsewhere_leaves_the_line(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 30.0, a=ModelConfig(rpm=1))
    (only,) = _fill(rl, "sim/a", 1)
    assert not rl.acquire("sim/a", 1, job_id="moved").allowed
    assert rl.acquire("sim/a", 1, job_id="next").ahead == 1
    assert rl.leave_line("sim/a", "moved")
    assert not rl.leave_line("sim/a", "moved")
    rl.cancel(only)
    assert rl.acquire("sim/a", 1, job_id="next").allowed


def test_wake_times_follow_the_line(rdb: redis.Redis) -> None:
    window = 5.0
    rl = limiter(rdb, window, a=ModelConfig(rpm=3), b=ModelConfig(concurrency=1))
    times = []
    for _ in range(3):
        admission = rl.acquire("sim/a", 1)
        assert admission.allowed and admission.admitted_at is not None
        times.append(admission.admitted_at)
        time.sleep(0.02)
    waits = []
    for rank in range(5):
        before = server_time(rdb)
        refused = rl.acquire("sim/a", 1, job_id=f"j{rank}")
        after = server_time(rdb)
        assert not refused.allowed and refused.ahead == rank
        if rank < 3:  # the job at rank r waits for the r-th entry of the window to leave
            assert times[rank] + window - after <= refused.retry_in_s <= times[rank] + window - before
        else:  # its turn hangs on admissions not made yet: it looks again a window later
            assert refused.retry_in_s == window
        waits.append(refused.retry_in_s)
    assert waits == sorted(waits) and len(set(waits[:4])) == 4

    # Slots free at no known time: a short poll, longer the further back in the line.
    assert rl.acquire("sim/b", 0, holder="running").allowed
    slot_waits = [rl.acquire("sim/b", 0, holder=f"h{i}", job_id=f"s{i}").retry_in_s for i in range(4)]
    assert slot_waits == sorted(slot_waits) and len(set(slot_waits)) == 4
    assert slot_waits[0] == SLOT_POLL_S and slot_waits[-1] <= SLOT_WAIT_MAX_S


def test_a_dead_job_at_the_head_lapses_and_the_line_moves_on(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 30.0, a=ModelConfig(concurrency=1))
    assert rl.acquire("sim/a", 0, holder="running").allowed
    dead = rl.acquire("sim/a", 0, holder="h-dead", job_id="dead", grace_s=0.3)
    assert not dead.allowed  # ... and it never comes back (cancelled, say)
    alive = rl.acquire("sim/a", 0, holder="h-alive", job_id="alive", grace_s=0.3)
    assert not alive.allowed and alive.ahead == 1
    assert rl.release_slot("sim/a", "running")
    assert not rl.acquire("sim/a", 0, holder="h-alive", job_id="alive", grace_s=0.3).allowed
    # The dead job's place lapses its grace after the wait it was given.
    time.sleep(dead.retry_in_s + 0.3 + 0.1)
    admitted = rl.acquire("sim/a", 0, holder="h-alive", job_id="alive", grace_s=0.3)
    assert admitted.allowed and admitted.ahead == 0
    assert rl.usage("sim/a")["waiting"] == 0


def test_line_keys_expire_with_the_last_waiting_job(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 0.5, a=ModelConfig(rpm=1, tpm=50))
    rl.acquire("sim/a", 5)
    refused = rl.acquire("sim/a", 5, job_id="j1", grace_s=1.0)
    assert not refused.allowed
    for key in ("llmq:rl:sim/a:line", "llmq:rl:sim/a:due", "llmq:rl:sim/a:want"):
        assert 0 < done(rdb.pttl(key)) <= (refused.retry_in_s + 1.0) * 1000 + 1001


def test_jobs_waiting_in_line_never_overshoot_any_limit(rdb: redis.Redis) -> None:
    window, rpm, tpm, cap = 1.0, 20, 300, 3
    rl = limiter(rdb, window, a=ModelConfig(rpm=rpm, tpm=tpm, concurrency=cap))
    admitted: list[tuple[float, int]] = []
    holding = most = 0
    lock = threading.Lock()
    stop = time.monotonic() + 3.5

    def job_stream(seed: int) -> None:
        nonlocal holding, most
        n = seed
        while time.monotonic() < stop:
            job, holder = uuid.uuid4().hex, uuid.uuid4().hex
            n = (n * 1103515245 + 12345) % 2**31
            tokens = 1 + n % 30
            while time.monotonic() < stop:
                admission = rl.acquire("sim/a", tokens, holder=holder, job_id=job, grace_s=0.5)
                if admission.allowed:
                    break
                time.sleep(admission.retry_in_s)
            else:
                return
            assert admission.admitted_at is not None
            with lock:
                admitted.append((admission.admitted_at, tokens))
                holding += 1
                most = max(most, holding)
            time.sleep(0.01)
            with lock:
                holding -= 1
            assert rl.release_slot("sim/a", holder)

    threads = [threading.Thread(target=job_stream, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    times = [t for t, _ in admitted]
    assert max_in_any_window(times, window) <= rpm
    assert max_in_any_window(times, window, [n for _, n in admitted]) <= tpm
    assert most <= cap
    # The line kept moving: about three windows' worth of requests got through.
    assert len(admitted) >= 2 * rpm
