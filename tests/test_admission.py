"""Admission, without HTTP: a trusted envelope in, one outcome out, on a fake clock with the real
in-memory spool and dispatcher (tests/web_harness.py).  tests/test_web.py checks how each
outcome is answered."""

from __future__ import annotations

import pytest
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from snsd.admission import AckMode, BreakerMode, BreakerPolicy, Kind, Outcome, Readiness
from snsd.breaker import CircuitBreaker
from tests.trust_helpers import envelope, notification, result_of, subscription_confirmation
from tests.web_harness import Snsd, s3_message


def admit(snsd: Snsd, fields: dict) -> Outcome:
    outcome = ensureDeferred(snsd.admission.admit(envelope(fields)))
    snsd.flush()
    return result_of(outcome)


def note(*keys: str) -> dict:
    return notification(s3_message(*keys))


# -- the breaker policy -------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(BreakerMode))
def test_a_closed_breaker_spools_in_every_mode(mode):
    policy = BreakerPolicy(CircuitBreaker(Clock()), mode)
    assert policy.on_arrival() is None
    assert policy.accepted_kind() is Kind.ACCEPTED
    assert not policy.skips_spooled()


def test_an_open_breaker_skips_rejects_or_spools_by_mode():
    clock = Clock()
    breaker = CircuitBreaker(clock, max_failures=1, cooldown=30)
    breaker.failed(breaker.acquire())
    clock.advance(10.5)
    assert BreakerPolicy(breaker, "skip").on_arrival() == Outcome(Kind.SKIPPED)
    assert BreakerPolicy(breaker, "reject").on_arrival() == Outcome(Kind.REJECTED, retry_after=20)
    assert BreakerPolicy(breaker, "spool").on_arrival() is None
    assert BreakerPolicy(breaker, BreakerMode.SPOOL).accepted_kind() is Kind.SPOOLED
    assert [BreakerPolicy(breaker, mode).skips_spooled() for mode in BreakerMode] == [True, False, False]


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError):
        BreakerPolicy(CircuitBreaker(Clock()), "ignore")


# -- outcomes -----------------------------------------------------------------------------


def test_a_notification_is_accepted_once_and_then_a_duplicate(tmp_path):
    snsd = Snsd(tmp_path)
    fields = note("a.csv", "b.csv")
    assert admit(snsd, fields) == Outcome(Kind.ACCEPTED, jobs=2)
    assert admit(snsd, fields) == Outcome(Kind.DUPLICATE)
    assert [r.key for r in snsd.jobs_seen] == ["a.csv", "b.csv"]


def test_a_message_without_object_created_records_is_ignored_with_its_reason(tmp_path):
    snsd = Snsd(tmp_path)
    assert admit(snsd, notification("plain text")) == Outcome(Kind.IGNORED, reason="message is not JSON")


def test_an_unsubscribe_confirmation_is_only_acknowledged(tmp_path):
    snsd = Snsd(tmp_path)
    fields = subscription_confirmation(message_type="UnsubscribeConfirmation")
    assert admit(snsd, fields).kind is Kind.UNSUBSCRIBED


def test_a_confirmation_that_fails_is_refused_with_the_trust_checks_status_and_may_come_again(tmp_path):
    snsd = Snsd(tmp_path)
    snsd.aws.routes[b"/"] = (500, b"<Error/>")
    fields = subscription_confirmation()
    refused = admit(snsd, fields)
    assert refused.kind is Kind.REFUSED and refused.status == 502
    assert fields["MessageId"] not in snsd.accepted


def test_a_rejected_message_is_not_remembered_so_the_retry_gets_in(tmp_path):
    snsd = Snsd(tmp_path, breaker_mode="reject")
    snsd.breaker.force_open()
    fields = note("a.csv")
    assert admit(snsd, fields).kind is Kind.REJECTED
    snsd.breaker.reset()
    assert admit(snsd, fields) == Outcome(Kind.ACCEPTED, jobs=1)


def test_after_job_answers_done_or_failed_and_a_failed_message_may_come_again(tmp_path):
    def job(record):
        if record.key == "bad.csv":
            raise ValueError("unreadable")
        return {}

    snsd = Snsd(tmp_path, job, ack=AckMode.AFTER_JOB, max_failures=10)
    assert admit(snsd, note("good.csv")) == Outcome(Kind.DONE, jobs=1)
    failing = note("bad.csv")
    assert admit(snsd, failing) == Outcome(Kind.FAILED, jobs=1)
    assert admit(snsd, failing) == Outcome(Kind.FAILED, jobs=1)  # forgotten in memory and in the spool


def test_draining_and_starting_are_refusals_asked_before_anything_else(tmp_path):
    snsd = Snsd(tmp_path)
    assert snsd.admission.refusal() is None
    snsd.dispatcher.ready = False
    assert snsd.admission.refusal().kind is Kind.STARTING
    snsd.dispatcher.drain(30)
    assert snsd.admission.refusal().kind is Kind.DRAINING


def test_readiness_follows_the_pool_the_spool_and_the_drain(tmp_path):
    snsd = Snsd(tmp_path)
    readiness = Readiness(snsd.pool, snsd.dispatcher)
    checks = readiness.checks()
    assert checks == {"listening": True, "pool": True, "spool": True, "draining": False}
    assert readiness.ready(checks)
    snsd.dispatcher.drain(30)
    checks = readiness.checks()
    assert checks["draining"] and not readiness.ready(checks)
