"""--role listener and --role worker, in memory: the daemon built by build_daemon, a signed POST
through StubTreq, and the tests' in-memory SQS queue (tests/sqs_fakes.py) on the same fake clock.

The listener: 200 only after the local commit; each record leaves the local spool only once SQS
confirmed it; an SQS outage never turns into 5xx, and the forwarder backs off (capped) meanwhile.
The worker: at most as many messages as free workers, a visibility heartbeat while jobs run,
nothing received while the breaker is open, and on drain unfinished messages go back at once.
"""

from __future__ import annotations

import json

import pytest
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred

from snsd import metrics
from snsd.records import S3ObjectRecord
from snsd.sqs.codec import encode_record
from snsd.sqs.forwarder import MAX_BACKOFF
from snsd.sqs.worker import DELETE_WAIT
from tests.sqs_fakes import MemoryQueue
from tests.trust_helpers import notification, result_of, signed
from tests.web_harness import Snsd, s3_message


def signed_notification(*keys, **kwargs):
    return signed(notification(s3_message(*keys), **kwargs))


def value(metric, **labels) -> float:
    return (metric.labels(**labels) if labels else metric)._value.get()


class HeldPool(Service):
    """A job pool whose jobs run only when the test lets them (``finish``)."""

    name = "pool"

    def __init__(self, reactor=None, workers: int = 1, nice: int = 0):
        self.held: list[tuple] = []

    def submit(self, fn, *args):
        d = Deferred()
        self.held.append((fn, args, d))
        return d

    def finish(self, count: int | None = None) -> None:
        count = len(self.held) if count is None else count
        running, self.held = self.held[:count], self.held[count:]
        for fn, args, d in running:
            maybeDeferred(fn, *args).chainDeferred(d)

    def is_ready(self):
        return True

    def stop(self, join: bool = True):
        pass


def held_pools():
    """The job pool holds its jobs; the queue's own io pool (a second call) runs inline."""
    from tests.web_harness import InlinePool

    made = []

    def factory(reactor, workers, nice=0):
        pool = HeldPool() if not made else InlinePool()
        made.append(pool)
        return pool

    return factory, made


# -- the listener ---------------------------------------------------------------------------------


def make_listener(tmp_path, **kwargs):
    """A listener whose in-memory queue runs on the daemon's own clock."""
    from twisted.internet.testing import MemoryReactorClock

    clock = MemoryReactorClock()
    q = MemoryQueue(clock, url="https://sqs.us-east-1.amazonaws.com/123456789012/snsd")
    snsd = Snsd(tmp_path, role="listener", queue=q, **kwargs)
    q.clock = snsd.clock  # one clock for both
    return snsd, q


def records_in(queue: MemoryQueue) -> list[str]:
    return [json.loads(body)["record"]["key"] for body in queue.bodies()]


def test_a_listener_answers_after_the_local_commit_and_forwards_each_record_as_a_message(tmp_path):
    snsd, q = make_listener(tmp_path)
    status, body, _ = snsd.post(signed_notification("a.csv", "b.csv"))
    assert (status, body) == (200, {"status": "accepted", "jobs": 2})
    assert records_in(q) == ["a.csv", "b.csv"]
    message = json.loads(q.bodies()[0])
    assert message["snsd"] == "record" and message["record"]["bucket"] == "incoming"
    assert message["record"]["message_id"]  # the SNS MessageId travels with the record
    assert snsd.counts()["records"] == 0  # confirmed by SQS: gone from the local spool
    assert snsd.jobs_seen == []  # a listener runs no job


def test_the_forwarder_sends_at_most_ten_records_per_batch(tmp_path):
    snsd, q = make_listener(tmp_path)
    q.down = True
    for n in range(5):
        snsd.post(signed_notification(*[f"{n}-{i}.csv" for i in range(5)], message_id=f"m{n}"))
    assert snsd.counts()["records"] == 25
    q.down = False
    calls_before = len(q.calls)
    snsd.clock.advance(MAX_BACKOFF)
    sends = q.calls[calls_before:]
    assert sends == ["send_batch"] * 3  # 10 + 10 + 5
    assert sorted(records_in(q)) == sorted(f"{n}-{i}.csv" for n in range(5) for i in range(5))
    assert snsd.counts()["records"] == 0


def test_an_sqs_outage_is_not_a_5xx_and_nothing_is_lost_once_it_is_back(tmp_path):
    snsd, q = make_listener(tmp_path)
    failures = value(metrics.FORWARD_FAILURES, what="call")
    q.down = True
    answers = [snsd.post(signed_notification(f"k{n}.csv", message_id=f"id-{n}"))[0] for n in range(30)]
    assert answers == [200] * 30
    assert snsd.counts()["records"] == 30 and q.bodies() == []
    assert value(metrics.OUTBOX_PENDING) == 30
    # 60 s of outage: the retries back off, doubling up to the cap, and keep going.
    delays = []
    for _ in range(12):
        delays.append(snsd.daemon.dispatcher.next_try() - snsd.clock.seconds())
        snsd.clock.advance(delays[-1])
    assert delays[:7] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, MAX_BACKOFF]
    assert max(delays) == MAX_BACKOFF
    assert value(metrics.FORWARD_FAILURES, what="call") > failures
    q.down = False
    snsd.clock.advance(MAX_BACKOFF)
    assert sorted(records_in(q)) == sorted(f"k{n}.csv" for n in range(30))
    assert snsd.counts()["records"] == 0 and value(metrics.OUTBOX_PENDING) == 0


def test_an_entry_sqs_refuses_stays_spooled_and_is_sent_again_alone(tmp_path):
    snsd, q = make_listener(tmp_path)
    q.refuse_ids = {"2"}  # the second record's spool id
    snsd.post(signed_notification("a.csv", "b.csv", "c.csv"))
    assert sorted(records_in(q)) == ["a.csv", "c.csv"]
    assert snsd.counts()["records"] == 1
    q.refuse_ids = set()
    snsd.clock.advance(MAX_BACKOFF)
    assert sorted(records_in(q)) == ["a.csv", "b.csv", "c.csv"]  # b once, the others not again
    assert snsd.counts()["records"] == 0


def test_the_listener_refuses_with_503_only_past_max_pending(tmp_path):
    snsd, q = make_listener(tmp_path, max_pending=3)
    q.down = True
    assert snsd.post(signed_notification("a.csv", "b.csv", message_id="one"))[0] == 200
    assert snsd.post(signed_notification("c.csv", "d.csv", message_id="two"))[0] == 200
    status, body, headers = snsd.post(signed_notification("e.csv", message_id="three"))
    assert status == 503 and body["error"] == "too many pending records"


# -- the worker -----------------------------------------------------------------------------------


def make_worker(tmp_path, job=None, *, workers=2, visibility=30, hang=False, **kwargs):
    from twisted.internet.testing import MemoryReactorClock

    dlq = MemoryQueue(MemoryReactorClock(), url="memory://dlq")
    q = MemoryQueue(MemoryReactorClock(), url="memory://queue", max_receive_count=3, dlq=dlq)
    q.hang = hang
    factory, pools = held_pools()
    snsd = Snsd(
        tmp_path,
        job,
        role="worker",
        queue=q,
        workers=workers,
        visibility_timeout=visibility,
        pool_factory=factory,
        **kwargs,
    )
    q.clock = dlq.clock = snsd.clock
    return snsd, q, dlq, pools[0]


def record_body(key: str, bucket: str = "incoming") -> str:
    return encode_record(S3ObjectRecord(bucket=bucket, key=key, etag="e1", message_id=f"sns-{key}"))


def test_a_worker_runs_a_record_writes_its_result_then_deletes_the_message(tmp_path):
    snsd, q, _, pool = make_worker(tmp_path)
    q.put(record_body("a.csv"))
    assert [r.key for r in snsd.jobs_seen] == []
    assert len(q.messages) == 1  # held while the job runs
    pool.finish()
    assert [r.key for r in snsd.jobs_seen] == ["a.csv"]
    assert [(line["key"], line["status"]) for line in snsd.results()] == [("a.csv", "ok")]
    snsd.clock.advance(DELETE_WAIT)  # finished messages share a DeleteMessageBatch
    assert q.messages == {}


def test_a_worker_receives_no_more_messages_than_it_has_free_workers(tmp_path):
    snsd, q, _, pool = make_worker(tmp_path, workers=2)
    for n in range(5):
        q.put(record_body(f"{n}.csv"))
    assert len(pool.held) == 2  # two jobs, and no receive asks for more
    assert len([m for m in q.messages.values() if m.receive_count]) == 2
    pool.finish(1)
    snsd.clock.advance(DELETE_WAIT)  # finished messages share a DeleteMessageBatch
    assert len(pool.held) == 2 and len(q.messages) == 4
    pool.finish()
    pool.finish()
    pool.finish()
    snsd.clock.advance(DELETE_WAIT)  # finished messages share a DeleteMessageBatch
    assert q.messages == {} and len(snsd.results()) == 5


def test_more_free_workers_than_a_receive_takes_means_two_receives_side_by_side(tmp_path):
    snsd, q, _, pool = make_worker(tmp_path, workers=12)
    assert q.asked() == [10, 2]  # twelve free workers: never more messages asked for than that
    for n in range(15):
        q.put(record_body(f"{n}.csv"))
    assert len(pool.held) == 12 and len(q.visible()) == 3


def test_messages_finished_together_are_deleted_ten_to_a_call(tmp_path):
    snsd, q, _, pool = make_worker(tmp_path, workers=12)
    for n in range(12):
        q.put(record_body(f"{n}.csv"))
    pool.finish()
    assert q.calls.count("delete") == 1  # ten at once; the other two wait a little for company
    snsd.clock.advance(DELETE_WAIT)
    assert q.calls.count("delete") == 2 and q.messages == {}


def test_a_drain_deletes_finished_messages_at_once(tmp_path):
    snsd, q, _, pool = make_worker(tmp_path)
    q.put(record_body("a.csv"))
    snsd.daemon.dispatcher.drain(10)
    pool.finish()  # its job ends during the drain: deleted now, not after DELETE_WAIT
    assert q.messages == {}


def test_the_heartbeat_keeps_a_running_jobs_message_invisible(tmp_path):
    snsd, q, _, pool = make_worker(tmp_path, visibility=30)
    extensions = value(metrics.SQS_VISIBILITY_EXTENSIONS)
    q.put(record_body("slow.csv"))
    for _ in range(9):  # 90 s: three visibility timeouts
        snsd.clock.advance(10)
    assert value(metrics.SQS_VISIBILITY_EXTENSIONS) - extensions == 9
    assert q.visible() == []  # never handed out again meanwhile
    assert (next(iter(q.messages.values()))).receive_count == 1
    pool.finish()
    snsd.clock.advance(DELETE_WAIT)  # finished messages share a DeleteMessageBatch
    assert q.messages == {}


def test_nothing_is_received_while_the_breaker_is_open_and_nothing_is_skipped(tmp_path):
    snsd, q, _, pool = make_worker(tmp_path)
    snsd.breaker.force_open()
    q.put(record_body("a.csv"))
    snsd.clock.advance(25)  # a long poll in flight before the breaker opened ends empty...
    assert pool.held == [] and len(q.visible()) == 1
    receives = q.calls.count("receive")
    snsd.clock.advance(5)
    assert q.calls.count("receive") == receives  # ...and no other starts while it is open
    snsd.breaker.reset()
    assert len(pool.held) == 1
    pool.finish()
    snsd.clock.advance(DELETE_WAIT)  # finished messages share a DeleteMessageBatch
    assert q.messages == {} and [line["key"] for line in snsd.results()] == ["a.csv"]


def test_while_half_open_one_trial_message_at_a_time_is_received(tmp_path):
    outcomes = [RuntimeError("down"), None, None, None]

    def flaky(record):
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        return {"verdict": "passed"}

    snsd, q, _, pool = make_worker(tmp_path, flaky, max_failures=1)
    q.put(record_body("first.csv"))
    pool.finish()  # fails: the breaker opens for its 30 s cooldown
    assert snsd.breaker.is_open
    for n in range(3):
        q.put(record_body(f"{n}.csv"))
    receives = q.calls.count("receive")
    snsd.clock.advance(30)  # half open
    assert len(pool.held) == 1  # one trial
    snsd.clock.advance(5)
    assert q.calls.count("receive") - receives <= 2  # no storm of receives while the trial runs
    pool.finish()  # the trial succeeds: closed again, the rest run
    assert not snsd.breaker.active
    assert len(pool.held) == 2


def test_drain_stops_receiving_waits_for_running_jobs_and_releases_the_rest_at_once(tmp_path):
    snsd, q, _, pool = make_worker(tmp_path, workers=2)
    for n in range(3):
        q.put(record_body(f"{n}.csv"))
    assert len(pool.held) == 2
    receives = q.calls.count("receive")
    drained = snsd.daemon.dispatcher.drain(10)
    pool.finish(1)  # one job ends inside the drain timeout: its message is deleted
    assert not drained.called
    snsd.clock.advance(10)  # the other does not: its message becomes visible again at once
    assert result_of(drained) is False
    snsd.clock.advance(DELETE_WAIT)  # finished messages share a DeleteMessageBatch
    assert len(q.messages) == 2 and len(q.visible()) == 2
    assert q.calls.count("receive") == receives  # none since the drain began


def test_a_drain_with_nothing_running_releases_a_message_received_meanwhile(tmp_path):
    snsd, q, _, pool = make_worker(tmp_path)
    drained = []
    snsd.daemon.dispatcher.drain(10).addCallback(drained.append)
    assert drained == []  # a long poll is in flight: what it returns must not stay hidden
    q.put(record_body("late.csv"))  # it returns this after the drain began
    assert drained == [True]
    assert pool.held == [] and len(q.visible()) == 1


def test_a_drain_stops_waiting_for_a_long_poll_that_does_not_answer(tmp_path):
    # Receives never answer (a connection that went quiet).
    snsd, q, _, pool = make_worker(tmp_path, hang=True)
    drained = []
    snsd.daemon.dispatcher.drain(10).addCallback(drained.append)
    snsd.clock.advance(24)
    assert drained == []
    snsd.clock.advance(1)  # the poll's 20 s and 5 s of grace
    assert drained == [True]


@pytest.mark.parametrize(
    "body, reason",
    [
        ("not json", "malformed"),
        ("[1, 2]", "malformed"),
        (json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "incoming"}), "s3_test_event"),
        (json.dumps({"snsd": "record", "v": 99, "record": {}}), "unknown_version"),
        (json.dumps({"snsd": "record", "v": 1, "record": {"bucket": 1}}), "malformed"),
        (json.dumps({"Records": [{"eventVersion": "2.1", "eventName": "ObjectRemoved:Delete"}]}), "no_work"),
    ],
)
def test_a_body_that_can_never_be_work_is_deleted_with_a_metric(tmp_path, body, reason):
    snsd, q, _, pool = make_worker(tmp_path)
    before = value(metrics.SQS_DISCARDED, reason=reason)
    q.put(body)
    snsd.clock.advance(DELETE_WAIT)  # finished messages share a DeleteMessageBatch
    assert q.messages == {} and pool.held == []
    assert value(metrics.SQS_DISCARDED, reason=reason) == before + 1


def test_an_s3_notification_sent_straight_to_sqs_is_work(tmp_path):
    snsd, q, _, pool = make_worker(tmp_path)
    q.put(s3_message("x.csv", "y.csv"))
    pool.finish()
    assert sorted(line["key"] for line in snsd.results()) == ["x.csv", "y.csv"]
    snsd.clock.advance(DELETE_WAIT)  # finished messages share a DeleteMessageBatch
    assert q.messages == {}


def test_a_signed_sns_envelope_is_verified_and_run(tmp_path):
    snsd, q, _, pool = make_worker(tmp_path)
    q.put(json.dumps(signed_notification("via-sns.csv")))
    snsd.flush()  # the signing certificate is fetched over (stub) HTTP
    pool.finish()
    (line,) = snsd.results()
    assert line["key"] == "via-sns.csv" and line["topic_arn"].startswith("arn:aws:sns:")
    snsd.clock.advance(DELETE_WAIT)  # finished messages share a DeleteMessageBatch
    assert q.messages == {}


def test_an_sns_envelope_with_a_bad_signature_is_deleted_without_a_job(tmp_path):
    snsd, q, _, pool = make_worker(tmp_path)
    forged = signed_notification("evil.csv")
    forged["Message"] = s3_message("other.csv")
    q.put(json.dumps(forged))
    snsd.flush()
    snsd.clock.advance(DELETE_WAIT)  # finished messages share a DeleteMessageBatch
    assert pool.held == [] and q.messages == {}


def test_a_failing_job_comes_back_and_lands_in_the_dead_letter_queue_after_max_receives(tmp_path):
    def broken(record):
        raise RuntimeError("always fails")

    snsd, q, dlq, pool = make_worker(tmp_path, broken, max_failures=100)
    q.put(record_body("poison.csv"))
    for _ in range(3):
        pool.finish()
        snsd.clock.advance(20)  # past the retry delay; the next long poll takes it again
    snsd.clock.advance(DELETE_WAIT)  # finished messages share a DeleteMessageBatch
    assert q.messages == {}
    (body,) = dlq.bodies()
    assert json.loads(body)["record"]["key"] == "poison.csv"
    assert snsd.results() == []


def test_a_worker_refuses_sns_posts(tmp_path):
    snsd, q, _, _ = make_worker(tmp_path)
    status, body, _ = snsd.post(signed_notification("a.csv"))
    assert status == 404
    assert snsd.request("GET", "/readyz")[0] == 200
    assert snsd.request("GET", "/healthz")[0] == 200


# -- the options ----------------------------------------------------------------------------------


def parse(*argv, environ=None):
    from snsd.config import SNSDOptions

    options = SNSDOptions(environ={} if environ is None else environ)
    options.parseOptions(["--dry-run", "--spool", ":memory:", *argv])
    return options.settings


def test_the_default_role_is_everything_in_one_process():
    from snsd.config import Role

    settings = parse()
    assert settings.role is Role.ALL and settings.queue is None


def test_the_queue_comes_from_the_flag_or_snsd_queue_url():
    from snsd.config import Role

    url = "https://sqs.us-east-1.amazonaws.com/123456789012/snsd"
    assert parse("--role", "worker", "--queue", url).queue == url
    settings = parse(environ={"SNSD_ROLE": "listener", "SNSD_QUEUE_URL": url})
    assert settings.role is Role.LISTENER and settings.queue == url


@pytest.mark.parametrize(
    "argv, complaint",
    [
        (("--role", "worker"), "--role worker needs --queue"),
        (("--queue", "https://q"), "--queue needs --role listener or --role worker"),
        (("--role", "listener", "--queue", "https://q", "--ack", "after-job"), "--ack after-job needs"),
        (("--role", "boss"), "--role must be one of all, listener, worker"),
    ],
)
def test_role_and_queue_mistakes_are_usage_errors(argv, complaint):
    from twisted.python import usage

    with pytest.raises(usage.UsageError, match=complaint):
        parse(*argv)


def test_a_listener_needs_no_results_bucket():
    from snsd.config import SNSDOptions

    options = SNSDOptions(environ={})
    options.parseOptions(["--spool", ":memory:", "--role", "listener", "--queue", "https://q"])
    assert options.settings.results_bucket is None


def test_a_worker_needs_no_writable_spool(tmp_path):
    from snsd.config import SNSDOptions

    options = SNSDOptions(environ={})
    unwritable = str(tmp_path / "no" / "such" / "spool.sqlite3")
    options.parseOptions(["--dry-run", "--results", str(tmp_path / "r.jsonl"), "--spool", unwritable,
                          "--role", "worker", "--queue", "https://q"])  # fmt: skip
    assert options.settings.spool == unwritable
