"""Signature checks handed to a thread, one batch per reactor turn (snsd.trust.offload).

A ``task.Clock`` marks the ends of reactor turns (``clock.advance(0)``); the thread hand-off
itself runs on the real reactor.
"""

from __future__ import annotations

import threading

import pytest
import pytest_twisted
from prometheus_client import REGISTRY
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from snsd.trust import offload
from snsd.trust.errors import TrustError
from snsd.trust.offload import OFFLOAD_AT, SignatureChecks
from tests.test_trust_verifier import CERT, Harness
from tests.trust_helpers import envelope, failure_of, notification, result_of, signed


@pytest.fixture
def checked_in(monkeypatch):
    """The name of the thread each signature was checked in, in order."""
    threads = []
    verify = offload.verify_signature

    def spy(fields, certificate):
        threads.append(threading.current_thread().name)
        return verify(fields, certificate)

    monkeypatch.setattr(offload, "verify_signature", spy)
    return threads


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def checks(clock):
    service = SignatureChecks(reactor, clock=clock)
    service.startService()
    yield service
    service.stopService()


def forged(fields: dict) -> dict:
    return {**fields, "Message": fields["Message"] + " (altered)"}


def busy_turn(checks, clock) -> None:
    """A turn with OFFLOAD_AT checks: the next turn's checks are batched."""
    for _ in range(OFFLOAD_AT):
        checks.check(signed(notification()), CERT)
    clock.advance(0)
    assert checks.batching


def test_in_a_quiet_turn_a_check_is_made_at_once_on_the_reactor(checks, clock, checked_in):
    here = threading.current_thread().name
    assert result_of(checks.check(signed(notification()), CERT)) is None
    assert failure_of(checks.check(forged(signed(notification())), CERT), TrustError).reason == "bad_signature"
    assert checked_in == [here, here]
    clock.advance(0)
    assert not checks.batching  # two checks in that turn: the next one is quiet too


@pytest_twisted.ensureDeferred
async def test_after_a_busy_turn_a_turns_checks_go_to_the_thread_together(checks, clock, checked_in):
    busy_turn(checks, clock)
    checked_in.clear()
    genuine = [checks.check(signed(notification()), CERT) for _ in range(OFFLOAD_AT)]
    asked = [*genuine, checks.check(forged(signed(notification())), CERT)]
    assert not any(d.called for d in asked)  # they wait for the end of the turn

    clock.advance(0)
    outcomes = await defer.DeferredList(asked, consumeErrors=True)

    assert [ok for ok, _ in outcomes] == [True] * len(genuine) + [False]
    assert outcomes[-1][1].value.reason == "bad_signature"
    assert len(checked_in) == len(asked)
    assert all("snsd-signatures" in name for name in checked_in)
    assert checks.batching  # still busy


def test_a_batch_that_turns_out_small_is_checked_on_the_reactor_and_the_next_turn_is_quiet(checks, clock, checked_in):
    busy_turn(checks, clock)
    checked_in.clear()
    asked = [checks.check(signed(notification()), CERT) for _ in range(OFFLOAD_AT - 1)]
    assert not any(d.called for d in asked)

    clock.advance(0)

    assert [result_of(d) for d in asked] == [None] * len(asked)
    assert checked_in == [threading.current_thread().name] * len(asked)
    assert not checks.batching


def test_before_the_service_starts_a_check_is_made_at_once(checked_in):
    checks = SignatureChecks(reactor, clock=Clock())
    assert result_of(checks.check(signed(notification()), CERT)) is None
    assert failure_of(checks.check(forged(signed(notification())), CERT), TrustError).reason == "bad_signature"
    assert len(checked_in) == 2


def test_stopping_makes_the_checks_still_queued(checks, clock, checked_in):
    busy_turn(checks, clock)
    asked = [checks.check(signed(notification()), CERT) for _ in range(OFFLOAD_AT + 1)]
    assert not any(d.called for d in asked)
    checks.stopService()
    assert [result_of(d) for d in asked] == [None] * len(asked)
    assert len(checked_in) == OFFLOAD_AT + len(asked)


@pytest_twisted.ensureDeferred
async def test_the_verifier_counts_and_refuses_a_forgery_checked_in_the_thread(checks, clock, checked_in):
    h = Harness(checks=checks)
    before = REGISTRY.get_sample_value("snsd_signature_failures_total", {"reason": "bad_signature"}) or 0.0
    h.verify(signed(notification()))  # fetches and caches the certificate
    busy_turn(checks, clock)
    checked_in.clear()
    good = [h.verifier.verify(envelope(signed(notification()))) for _ in range(OFFLOAD_AT)]
    bad = h.verifier.verify(envelope(forged(signed(notification()))))
    clock.advance(0)

    await defer.gatherResults(good)
    with pytest.raises(TrustError) as refused:
        await bad

    assert refused.value.reason == "bad_signature"
    assert all("snsd-signatures" in name for name in checked_in)
    after = REGISTRY.get_sample_value("snsd_signature_failures_total", {"reason": "bad_signature"})
    assert after == before + 1


# -- pinned by mutation testing (issue 18) ----------------------------------------------------------


def test_three_checks_make_a_busy_turn_two_do_not(checks, clock):
    assert OFFLOAD_AT == 3
    for _ in range(2):
        checks.check(signed(notification()), CERT)
    clock.advance(0)
    assert not checks.batching
    for _ in range(3):
        checks.check(signed(notification()), CERT)
    clock.advance(0)
    assert checks.batching


def test_one_daemon_thread_named_for_its_job():
    checks = SignatureChecks(reactor, clock=Clock())
    assert checks.name == "signature-checks"
    assert (checks._pool.min, checks._pool.max) == (1, 1)
    assert checks._pool.threadFactory(target=lambda: None).daemon  # never keeps a stopping process alive


def test_before_the_service_starts_nothing_waits_for_the_end_of_a_turn():
    clock = Clock()
    checks = SignatureChecks(reactor, clock=clock)
    checks.check(signed(notification()), CERT)
    assert clock.getDelayedCalls() == []


def test_stopping_stops_the_thread_and_the_end_of_turn_call(checks, clock):
    checks.check(signed(notification()), CERT)
    assert len(clock.getDelayedCalls()) == 1
    checks.stopService()
    assert not checks.running
    assert not checks._pool.started
    assert clock.getDelayedCalls() == []


def test_stopping_a_service_never_started_is_harmless():
    checks = SignatureChecks(reactor, clock=Clock())
    checks.stopService()
    assert not checks._pool.started


@pytest_twisted.ensureDeferred
async def test_a_batch_of_exactly_offload_at_goes_to_the_thread(checks, clock, checked_in):
    busy_turn(checks, clock)
    checked_in.clear()
    asked = [checks.check(signed(notification()), CERT) for _ in range(OFFLOAD_AT)]
    clock.advance(0)
    await defer.gatherResults(asked)
    assert len(checked_in) == OFFLOAD_AT
    assert all("snsd-signatures" in name for name in checked_in)


@pytest_twisted.ensureDeferred
async def test_a_small_batch_is_checked_once_and_never_handed_to_the_thread(checks, clock, checked_in):
    from twisted.internet.task import deferLater
    from twisted.internet.threads import deferToThreadPool

    busy_turn(checks, clock)
    checked_in.clear()
    asked = [checks.check(signed(notification()), CERT) for _ in range(OFFLOAD_AT - 1)]
    clock.advance(0)
    # The one thread runs hand-offs in order: once this has run, any hand-off made before it has too.
    await deferToThreadPool(reactor, checks._pool, lambda: None)
    await deferLater(reactor, 0, lambda: None)
    assert [result_of(d) for d in asked] == [None] * len(asked)
    assert checked_in == [threading.current_thread().name] * len(asked)


def test_a_failed_hand_off_fails_every_check_of_its_batch():
    from twisted.python.failure import Failure

    batch = [({}, CERT, defer.Deferred()) for _ in range(3)]
    offload._fail_each(Failure(RuntimeError("the pool stopped")), batch)
    assert [str(failure_of(d, RuntimeError)) for _, _, d in batch] == ["the pool stopped"] * 3
