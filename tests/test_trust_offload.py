"""Signature checks handed to a thread, one batch per reactor turn (snsd.trust.offload)."""

from __future__ import annotations

import threading

import pytest
import pytest_twisted
from prometheus_client import REGISTRY
from twisted.internet import defer, reactor

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
def checks():
    service = SignatureChecks(reactor)
    service.startService()
    yield service
    service.stopService()


def forged(fields: dict) -> dict:
    return {**fields, "Message": fields["Message"] + " (altered)"}


@pytest_twisted.ensureDeferred
async def test_a_turns_checks_go_to_one_thread_together_and_a_forgery_fails_alone(checks, checked_in):
    genuine = [signed(notification()) for _ in range(OFFLOAD_AT + 1)]
    asked = [checks.check(fields, CERT) for fields in genuine]
    asked.append(checks.check(forged(signed(notification())), CERT))
    assert not any(d.called for d in asked)  # nothing is checked during the turn that asked

    outcomes = await defer.DeferredList(asked, consumeErrors=True)

    assert [ok for ok, _ in outcomes] == [True] * len(genuine) + [False]
    assert outcomes[-1][1].check(TrustError)
    assert outcomes[-1][1].value.reason == "bad_signature"
    assert len(checked_in) == len(asked)
    assert all("snsd-signatures" in name for name in checked_in)


@pytest_twisted.ensureDeferred
async def test_a_small_batch_is_checked_on_the_reactor(checks, checked_in):
    asked = [checks.check(signed(notification()), CERT) for _ in range(OFFLOAD_AT - 1)]
    assert not any(d.called for d in asked)

    await defer.gatherResults(asked)

    assert checked_in == [threading.current_thread().name] * len(asked)


def test_before_the_service_starts_a_check_is_made_at_once(checked_in):
    checks = SignatureChecks(reactor)
    assert result_of(checks.check(signed(notification()), CERT)) is None
    assert failure_of(checks.check(forged(signed(notification())), CERT), TrustError).reason == "bad_signature"
    assert len(checked_in) == 2


def test_stopping_makes_the_checks_still_queued(checked_in):
    checks = SignatureChecks(reactor)
    checks.startService()
    asked = [checks.check(signed(notification()), CERT) for _ in range(OFFLOAD_AT + 1)]
    checks.stopService()
    assert [result_of(d) for d in asked] == [None] * len(asked)
    assert len(checked_in) == len(asked)


@pytest_twisted.ensureDeferred
async def test_the_verifier_counts_and_refuses_a_forgery_checked_in_the_thread(checks):
    h = Harness()
    h.verifier = type(h.verifier)(
        h.verifier._certificates, h.verifier._host_trust, h.verifier._topics, h.clock, checks=checks
    )
    before = REGISTRY.get_sample_value("snsd_signature_failures_total", {"reason": "bad_signature"}) or 0.0
    await h.verify(signed(notification()))  # fetches and caches the certificate
    good = [h.verifier.verify(envelope(signed(notification()))) for _ in range(OFFLOAD_AT)]
    bad = h.verifier.verify(envelope(forged(signed(notification()))))

    await defer.gatherResults(good)
    with pytest.raises(TrustError) as refused:
        await bad

    assert refused.value.reason == "bad_signature"
    after = REGISTRY.get_sample_value("snsd_signature_failures_total", {"reason": "bad_signature"})
    assert after == before + 1
