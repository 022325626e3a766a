"""The dispatcher: spool -> breaker -> bounded pool -> sink, with every outcome recorded."""

import json
import os
import sqlite3
import threading

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from snsd.admission import BreakerPolicy
from snsd.breaker import CircuitBreaker, State
from snsd.dispatcher import CLAIM_RETRY, Backpressure, Dispatcher
from snsd.envelope import parse_envelope
from snsd.pool import CAN_NICE_THREADS, WorkerPool
from snsd.sinks import JSONLinesSink
from snsd.spool import SQLiteSpool


def envelope(message_id, keys):
    message = json.dumps(
        {
            "Records": [
                {
                    "eventVersion": "2.1",
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": "b"}, "object": {"key": k}},
                }
                for k in keys
            ]
        }
    )
    body = json.dumps(
        {
            "Type": "Notification",
            "MessageId": message_id,
            "TopicArn": "arn:aws:sns:us-east-1:1:t",
            "Message": message,
            "Timestamp": "2026-11-29T10:00:00.000Z",
        }
    ).encode()
    return parse_envelope(body)


def records_of(env):
    from snsd.records import parse_s3_message

    return parse_s3_message(env.message, env.message_id, env.topic_arn).records


class Harness:
    def __init__(self, tmp_path, job, workers=3, mode="spool", max_pending=10_000, max_failures=2, nice=0):
        self.clock = Clock()
        self.breaker = CircuitBreaker(self.clock, max_failures=max_failures, cooldown=10)
        self.pool = WorkerPool(reactor, workers, nice=nice)
        self.spool = SQLiteSpool(reactor, ":memory:", clock=self.clock)
        self.results_path = tmp_path / "results.jsonl"
        self.sink = JSONLinesSink(str(self.results_path))
        self.dispatcher = Dispatcher(
            self.spool,
            self.pool,
            self.breaker,
            job,
            self.sink,
            self.clock,
            workers=workers,
            policy=BreakerPolicy(self.breaker, mode),
            max_pending=max_pending,
        )

    async def start(self):
        self.pool.startService()
        self.dispatcher.start(await self.spool.open())

    async def submit(self, message_id, *keys):
        env = envelope(message_id, keys)
        return await self.dispatcher.accept(env, records_of(env))

    async def track(self, message_id, *keys):
        """Submit; returns a Deferred firing True when all its jobs succeeded."""
        env = envelope(message_id, keys)
        _, done = await self.dispatcher.accept(env, records_of(env), track=True)
        return done

    def results(self):
        return [json.loads(line) for line in self.results_path.read_text().splitlines()]

    def count_handoffs(self) -> list[int]:
        """From now on, the size of each pool call's batch, in order."""
        handoffs = []
        submit = self.pool.submit
        self.pool.submit = lambda fn, batch: handoffs.append(len(batch)) or submit(fn, batch)
        return handoffs

    async def stop(self):
        # Let a job a test released finish here, not in a later test (metrics are process-wide).
        await self.dispatcher.drain(30)
        self.pool.stopService()
        await self.spool.close()
        self.sink.close()


async def started_recording_keys(tmp_path, **options) -> tuple[Harness, list[str]]:
    """A started harness whose job records each record's key, in the order they ran."""
    ran: list[str] = []
    h = Harness(tmp_path, lambda record: ran.append(record.key) or {}, **options)
    await h.start()
    return h, ran


@pytest_twisted.ensureDeferred
async def test_never_more_than_workers_jobs_at_once(tmp_path):
    lock = threading.Lock()
    release = threading.Event()
    state = {"now": 0, "max": 0}
    saturated = defer.Deferred()

    def job(record):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            if state["now"] == 3:
                reactor.callFromThread(lambda: saturated.called or saturated.callback(None))
        release.wait(10)
        with lock:
            state["now"] -= 1
        return {"key": record.key}

    h = Harness(tmp_path, job, workers=3)
    await h.start()
    done = [await h.track(f"m-{i}", f"k{i}") for i in range(10)]
    await saturated
    assert h.dispatcher.jobs_running == 3
    assert h.dispatcher.pending == 7
    release.set()
    assert all(await defer.gatherResults(done))
    assert state["max"] == 3
    lines = h.results()
    assert sorted(line["key"] for line in lines) == sorted(f"k{i}" for i in range(10))
    assert all(line["status"] == "ok" and line["worker"].startswith("PoolThread-snsd-jobs") for line in lines)
    assert await h.spool.counts() == {"records": 0, "dead_letters": 0}
    await h.stop()


@pytest_twisted.ensureDeferred
async def test_job_errors_are_recorded_as_results_and_dead_letters_and_trip_the_breaker(tmp_path):
    class Missing(Exception):
        kind = "s3_not_found"

    def job(record):
        raise Missing(f"no such key {record.key}")

    h = Harness(tmp_path, job, workers=1, max_failures=2)
    await h.start()
    assert await (await h.track("m-1", "a", "b")) is False
    lines = h.results()
    assert [(line["status"], line["error_kind"], line["error"]) for line in lines] == [
        ("error", "s3_not_found", "no such key a"),
        ("error", "s3_not_found", "no such key b"),
    ]
    assert h.breaker.state is State.OPEN
    assert await h.spool.counts() == {"records": 0, "dead_letters": 2}
    await h.stop()


@pytest_twisted.ensureDeferred
async def test_a_failed_verdict_is_a_successful_job(tmp_path):
    h = Harness(tmp_path, lambda record: {"verdict": "failed"}, workers=1, max_failures=1)
    await h.start()
    assert await (await h.track("m-1", "a")) is True
    assert h.breaker.state is State.CLOSED
    await h.stop()


@pytest_twisted.ensureDeferred
async def test_spool_mode_holds_records_while_open_and_runs_them_after(tmp_path):
    h, ran = await started_recording_keys(tmp_path, workers=2)
    h.breaker.force_open()
    done = await h.track("m-1", "a", "b", "c")
    assert await h.spool.counts() == {"records": 3, "dead_letters": 0}
    assert ran == [] and h.dispatcher.pending == 3
    h.breaker.reset()
    assert await done is True
    assert sorted(ran) == ["a", "b", "c"]
    await h.stop()


@pytest_twisted.ensureDeferred
async def test_a_caller_giving_up_on_accept_leaves_the_write_and_its_count_alone(tmp_path):
    h, ran = await started_recording_keys(tmp_path, workers=2)
    h.breaker.force_open()  # spool mode: records wait, so the count can be read
    gone = envelope("m-gone", ["gone.csv"])
    accepted = h.dispatcher.accept(gone, records_of(gone))
    accepted.cancel()  # what Klein does when the client hangs up while the message is spooled
    with pytest.raises(defer.CancelledError):
        await accepted
    assert await h.spool.counts() == {"records": 1, "dead_letters": 0}  # the write went on
    assert h.dispatcher.pending == 1
    done = await h.track("m-next", "next.csv")
    h.breaker.reset()
    assert await done is True
    await h.dispatcher.drain(30)
    assert sorted(ran) == ["gone.csv", "next.csv"]
    assert h.dispatcher.pending == 0
    await h.stop()


@pytest_twisted.ensureDeferred
async def test_a_write_that_cannot_even_be_queued_gives_its_reservation_back(tmp_path):
    h, _ = await started_recording_keys(tmp_path, workers=1)

    def unwritable(envelope, records):
        raise TypeError("Integer exceeds 64-bit range")  # what orjson said of a size of 1e300

    h.spool.add = unwritable
    env = envelope("m-1", ["a"])
    with pytest.raises(TypeError):
        h.dispatcher.accept(env, records_of(env))
    assert h.dispatcher.pending == 0
    await h.stop()


@pytest_twisted.ensureDeferred
async def test_a_failed_claim_is_tried_again_without_waiting_for_new_work(tmp_path):
    h, ran = await started_recording_keys(tmp_path, workers=1)
    claim, calls = h.spool.claim, []

    def locked_once(after_id, limit):
        calls.append(limit)
        if len(calls) == 1:  # the pump after the message's commit
            return defer.fail(sqlite3.OperationalError("database is locked"))
        return claim(after_id, limit)

    h.spool.claim = locked_once
    done = await h.track("m-1", "a")  # spooled; any later spool operation would pump again
    assert len(calls) == 1 and ran == [] and h.dispatcher.pending == 1
    h.clock.advance(CLAIM_RETRY)  # nothing else happens: the retry alone must run it
    assert await done is True
    assert ran == ["a"]
    await h.stop()


@pytest_twisted.ensureDeferred
async def test_half_open_runs_one_trial_then_the_rest(tmp_path):
    h, ran = await started_recording_keys(tmp_path, workers=3, max_failures=1)
    h.breaker.failed(h.breaker.acquire())
    assert h.breaker.state is State.OPEN
    done = await h.track("m-1", "a", "b", "c")
    h.clock.advance(10)  # half-open: one trial, which succeeds and closes the breaker
    assert await done is True
    assert h.breaker.state is State.CLOSED
    assert ran[0] == "a" and sorted(ran) == ["a", "b", "c"]
    await h.stop()


@pytest_twisted.ensureDeferred
async def test_skip_mode_dead_letters_spooled_records_while_open(tmp_path):
    h = Harness(tmp_path, lambda record: {}, workers=1, mode="skip")
    await h.start()
    h.breaker.force_open()
    assert await (await h.track("m-1", "a", "b")) is False
    assert await h.spool.counts() == {"records": 0, "dead_letters": 2}
    await h.stop()


@pytest_twisted.ensureDeferred
async def test_backpressure_takes_a_message_whole_below_max_pending_and_refuses_at_it_recording_nothing(tmp_path):
    h = Harness(tmp_path, lambda record: {}, workers=1, max_pending=3)
    await h.start()
    h.breaker.force_open()
    await h.submit("m-1", "a", "b")
    await h.submit("m-2", "c", "d")  # 2 pending, below the cap: taken whole, one message over it
    with pytest.raises(Backpressure):
        await h.submit("m-3", "e")
    assert await h.spool.counts() == {"records": 4, "dead_letters": 0}
    assert h.dispatcher.pending == 4
    await h.stop()


class BlockingJob:
    """A job that signals when it starts and then waits to be released."""

    def __init__(self):
        self.started = defer.Deferred()
        self.release = threading.Event()

    def __call__(self, record):
        reactor.callFromThread(lambda: self.started.called or self.started.callback(None))
        self.release.wait(10)
        return {}


@pytest_twisted.ensureDeferred
async def test_drain_waits_for_running_jobs_and_leaves_pending_spooled(tmp_path):
    job = BlockingJob()
    h = Harness(tmp_path, job, workers=1)
    await h.start()
    await h.submit("m-1", "a", "b")
    await job.started
    draining = h.dispatcher.drain(30)
    assert not draining.called
    job.release.set()
    assert await draining is True
    assert await h.spool.counts() == {"records": 1, "dead_letters": 0}
    await h.stop()


@pytest_twisted.ensureDeferred
async def test_drain_gives_up_at_the_timeout(tmp_path):
    job = BlockingJob()
    h = Harness(tmp_path, job, workers=1)
    await h.start()
    await h.submit("m-1", "a")
    await job.started
    draining = h.dispatcher.drain(5)
    h.clock.advance(5)
    assert await draining is False
    job.release.set()
    await h.stop()


@pytest.mark.skipif(not CAN_NICE_THREADS, reason="per-thread niceness is Linux-only")
@pytest_twisted.ensureDeferred
async def test_jobs_run_niced_below_the_reactor(tmp_path):
    def own_niceness(record):
        return {"nice": os.getpriority(os.PRIO_PROCESS, threading.get_native_id())}

    h = Harness(tmp_path, own_niceness, workers=1, nice=7)
    await h.start()
    assert await (await h.track("m-1", "a")) is True
    reactor_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert h.results()[0]["result"]["nice"] == min(19, reactor_nice + 7)
    await h.stop()


async def started_with_short_jobs(tmp_path, job=lambda record: {}) -> Harness:
    """A started Harness of 4 workers that has run one sub-millisecond job ("w"), so it batches."""
    h = Harness(tmp_path, job, workers=4)
    await h.start()
    assert await (await h.track("warm-up", "w")) is True
    assert h.dispatcher.batches.concurrency(h.dispatcher.workers) == 1  # the warm-up job took well under a millisecond
    return h


@pytest_twisted.ensureDeferred
async def test_sub_millisecond_jobs_go_to_the_pool_in_batches_one_batch_at_a_time(tmp_path):
    lock = threading.Lock()
    state = {"now": 0, "max": 0}
    threads = set()

    def job(record):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        threads.add(threading.current_thread().name)
        with lock:
            state["now"] -= 1
        return {}

    h = await started_with_short_jobs(tmp_path, job)
    size = h.dispatcher.batches.size()
    assert size > 1
    handoffs = h.count_handoffs()
    h.breaker.force_open()  # hold a backlog back, then let it go at once
    threads.clear()
    done = [await h.track(f"m-{i}", f"k{i}") for i in range(12)]
    h.breaker.reset()
    assert all(await defer.gatherResults(done))
    assert handoffs == [min(size, 12 - i) for i in range(0, 12, size)]  # one claim's worth per hand-off
    assert state["max"] == 1  # never side by side
    assert sorted(line["key"] for line in h.results()[1:]) == sorted(f"k{i}" for i in range(12))
    assert len(threads) <= len(handoffs)  # a batch runs in one thread
    await h.stop()


@pytest_twisted.ensureDeferred
async def test_a_batch_that_is_not_full_waits_briefly_for_company_and_a_full_one_does_not(tmp_path):
    from snsd.batching import BATCH_WAIT

    h = await started_with_short_jobs(tmp_path)
    handoffs = h.count_handoffs()

    # Nobody waits on these records (the default --ack spooled): they wait for company.
    first = await h.submit("m-1", "a")
    second = await h.submit("m-2", "b")
    assert handoffs == [] and h.dispatcher.pending == 2
    h.clock.advance(BATCH_WAIT)
    await h.dispatcher._when_done(first + second)  # what --ack after-job waits on
    assert handoffs == [2]

    # A full batch goes at once, in the transaction that spools it.
    size = h.dispatcher.batches.size()
    full = await h.submit("m-full", *(f"k{i}" for i in range(size)))
    await h.dispatcher._when_done(full)
    assert handoffs == [2, size]
    await h.stop()


@pytest_twisted.ensureDeferred
async def test_a_drain_stops_a_batch_from_waiting_for_company(tmp_path):
    h = await started_with_short_jobs(tmp_path)
    await h.submit("m-1", "a")
    waiting = [call for call in h.clock.getDelayedCalls() if call.func == h.dispatcher._pump]
    assert len(waiting) == 1
    assert await h.dispatcher.drain(30) is True
    assert not waiting[0].active()
    assert h.dispatcher.pending == 1  # still spooled, for the next start
    h.pool.stopService()
    await h.spool.close()
    h.sink.close()


class RecordingSink:
    """The JSON-lines sink, recording each call; ``refuse`` names keys it cannot write."""

    def __init__(self, sink, refuse=()):
        self.sink = sink
        self.refuse = set(refuse)
        self.calls = []

    def write(self, line):
        self.calls.append(("write", [line["key"]]))
        if line["key"] in self.refuse:
            raise OSError("disk full")
        self.sink.write(line)

    def write_many(self, lines):
        self.calls.append(("write_many", [line["key"] for line in lines]))
        if any(line["key"] in self.refuse for line in lines):
            raise OSError("disk full")
        self.sink.write_many(lines)


async def run_one_batch(h: Harness, *keys):
    """Submit each key in its own message while the breaker holds them back, so they run as one batch."""
    h.breaker.force_open()
    done = [await h.track(f"m-{key}", key) for key in keys]
    h.breaker.reset()
    return [await d for d in done]


@pytest_twisted.ensureDeferred
async def test_a_result_the_sink_cannot_write_dead_letters_its_record_alone_within_a_batch(tmp_path):
    class RefusingSink:
        def __init__(self, sink):
            self.sink = sink

        def write(self, line):
            if line["key"] == "bad":
                raise OSError("disk full")
            self.sink.write(line)

        def write_many(self, lines):
            if any(line["key"] == "bad" for line in lines):
                raise OSError("disk full")
            self.sink.write_many(lines)

    h = await started_with_short_jobs(tmp_path)
    h.dispatcher.sink = RefusingSink(h.sink)
    assert await run_one_batch(h, "a", "bad", "c") == [True, False, True]
    assert [line["key"] for line in h.results()] == ["w", "a", "c"]
    assert await h.spool.counts() == {"records": 0, "dead_letters": 1}
    await h.stop()


@pytest_twisted.ensureDeferred
async def test_a_batchs_results_go_to_the_sink_in_one_write(tmp_path):
    h = await started_with_short_jobs(tmp_path)
    sink = h.dispatcher.sink = RecordingSink(h.sink)
    assert await run_one_batch(h, "a", "b", "c") == [True, True, True]
    assert sink.calls == [("write_many", ["a", "b", "c"])]
    assert [line["key"] for line in h.results()] == ["w", "a", "b", "c"]
    await h.stop()


@pytest_twisted.ensureDeferred
async def test_when_a_batchs_write_fails_each_result_is_written_alone(tmp_path):
    h = await started_with_short_jobs(tmp_path)
    sink = h.dispatcher.sink = RecordingSink(h.sink, refuse={"bad"})
    assert await run_one_batch(h, "a", "bad", "c") == [True, False, True]
    assert sink.calls == [("write_many", ["a", "bad", "c"]), ("write", ["a"]), ("write", ["bad"]), ("write", ["c"])]
    assert [line["key"] for line in h.results()] == ["w", "a", "c"]
    assert await h.spool.counts() == {"records": 0, "dead_letters": 1}
    await h.stop()


@pytest_twisted.ensureDeferred
async def test_a_job_running_past_the_short_limit_lets_the_others_run(tmp_path):
    from snsd.batching import LONG_JOB

    slow_started = defer.Deferred()
    release = threading.Event()

    def job(record):
        if record.key == "slow":
            reactor.callFromThread(slow_started.callback, None)
            release.wait(10)
        return {}

    h = await started_with_short_jobs(tmp_path, job)
    slow = await h.track("m-slow", "slow")
    await slow_started
    fast = await h.track("m-fast", "fast")
    assert h.dispatcher.pending == 1  # one at a time: "fast" waits behind "slow"
    h.clock.advance(LONG_JOB)  # "slow" has now run too long to count as short
    assert h.dispatcher.batches.concurrency(h.dispatcher.workers) == 4
    assert await fast is True  # while "slow" still runs
    assert not slow.called
    release.set()
    assert await slow is True
    await h.stop()


@pytest_twisted.ensureDeferred
async def test_a_failed_jobs_log_line_names_its_error_kind_once(tmp_path):
    from twisted.logger import formatEvent, globalLogPublisher

    class NotFound(Exception):
        kind = "s3_not_found"

    def job(record):
        raise (NotFound(f"s3_not_found: s3://b/{record.key}") if record.key == "a" else ValueError("bad header"))

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        h = Harness(tmp_path, job, workers=1, max_failures=10)
        await h.start()
        assert await (await h.track("m-1", "a", "b")) is False
        await h.stop()
    finally:
        globalLogPublisher.removeObserver(events.append)
    failed = sorted(formatEvent(e) for e in events if e.get("log_format", "").startswith("job failed"))
    assert failed == ["job failed b/a: s3_not_found: s3://b/a", "job failed b/b: ValueError: bad header"]
