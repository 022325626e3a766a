"""The whole trust decision for one envelope: order, refusals, metrics, LocalStack."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

from snsd.trust.certs import CertificateStore
from snsd.trust.hosts import HostTrust
from snsd.trust.topics import TopicAllowList
from snsd.trust.verifier import MessageVerifier, TrustError
from tests.trust_helpers import (
    LOCALSTACK_CERT_URL,
    NOW,
    TOPIC,
    RecordingResource,
    certificate_pem,
    envelope,
    failure_of,
    make_certificate,
    notification,
    result_of,
    rsa_key,
    signed,
    subscription_confirmation,
)

PATH = b"/SimpleNotificationService-0123456789abcdef.pem"
LOCALSTACK_PATH = b"/_aws/sns/SimpleNotificationService-6c6f63616c737461636b.pem"
CERT = make_certificate(rsa_key())
LOCALSTACK_CERT = make_certificate(rsa_key("localstack"), common_name="LocalStack TEST SNS Root Certificate Authority")


class Harness:
    def __init__(self, topics=(), trusted=(), verify_signatures=True, max_age=3600.0, checks=None):
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        self.resource = RecordingResource(
            {PATH: (200, certificate_pem(CERT)), LOCALSTACK_PATH: (200, certificate_pem(LOCALSTACK_CERT))}
        )
        self.stub = StubTreq(self.resource)
        hosts = HostTrust(trusted)
        self.verifier = MessageVerifier(
            CertificateStore(self.stub, self.clock, hosts),
            hosts,
            TopicAllowList(topics),
            self.clock,
            max_age=max_age,
            verify_signatures=verify_signatures,
            checks=checks,
        )

    def verify(self, fields):
        d = self.verifier.verify(envelope(fields))
        self.stub.flush()
        return d

    def refused(self, fields) -> TrustError:
        return failure_of(self.verify(fields), TrustError)


def failures(reason):
    return REGISTRY.get_sample_value("snsd_signature_failures_total", {"reason": reason}) or 0.0


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("make", [notification, subscription_confirmation])
def test_a_genuine_message_verifies(version, make):
    h = Harness()
    assert result_of(h.verify(signed(make(), version=version))) is None
    assert len(h.resource.requests) == 1


def test_many_messages_share_the_certificate():
    h = Harness()
    for _ in range(20):
        result_of(h.verify(signed(notification(subject="s"))))
    assert len(h.resource.requests) == 1


@pytest.mark.parametrize("field", ["Message", "MessageId", "Subject", "Timestamp", "Type"])
def test_a_tampered_message_is_refused_with_403_and_counted(field):
    h = Harness()
    fields = signed(notification(subject="hello"))
    fields[field] = {"Type": "SubscriptionConfirmation", "Timestamp": "2025-06-01T11:59:00.000Z"}.get(
        field, fields[field] + "x"
    )
    if field == "Type":
        fields.update(Token="t", SubscribeURL="https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription")
    before = failures("bad_signature")
    error = h.refused(fields)
    assert (error.status, error.reason) == (403, "bad_signature")
    assert failures("bad_signature") - before == 1


def test_a_tampered_topic_in_the_same_region_is_refused():
    h = Harness()
    fields = signed(notification())
    fields["TopicArn"] = TOPIC + "-other"
    assert h.refused(fields).reason == "bad_signature"


def test_refusals_are_logged_with_message_id_and_topic():
    h = Harness()
    fields = signed(notification())
    fields["Message"] = "forged"
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        h.refused(fields)
    finally:
        globalLogPublisher.removeObserver(events.append)
    [event] = [e for e in events if e.get("reason") == "bad_signature"]
    assert event["message_id"] == fields["MessageId"]
    assert event["topic"] == TOPIC
    assert event["log_level"] == LogLevel.warn


def test_a_foreign_topic_is_refused_before_anything_is_fetched():
    h = Harness(topics=["arn:aws:sns:*:123456789012:uploads"])
    result_of(
        h.verify(
            signed(
                notification(
                    topic_arn="arn:aws:sns:eu-west-1:123456789012:uploads",
                    cert_url="https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem",
                )
            )
        )
    )
    h.resource.requests.clear()
    fields = signed(notification(topic_arn="arn:aws:sns:us-east-1:999999999999:uploads"))
    error = h.refused(fields)
    assert (error.status, error.reason) == (403, "topic_not_allowed")
    assert h.resource.requests == []


def test_precheck_is_synchronous_and_never_fetches():
    h = Harness(topics=[TOPIC])
    h.verifier.precheck(envelope(signed(notification())))
    with pytest.raises(TrustError) as e:
        h.verifier.precheck(envelope(signed(notification(topic_arn=TOPIC + "x"))))
    assert e.value.reason == "topic_not_allowed"
    assert h.resource.requests == []


def test_a_stale_timestamp_is_refused():
    h = Harness(max_age=3600)
    result_of(h.verify(signed(notification(timestamp=NOW - timedelta(seconds=3600)))))
    error = h.refused(signed(notification(timestamp=NOW - timedelta(seconds=3601))))
    assert (error.status, error.reason) == (403, "stale_timestamp")


def test_a_replay_is_refused_once_it_is_older_than_max_age():
    h = Harness(max_age=60)
    fields = signed(notification())
    result_of(h.verify(fields))
    h.clock.advance(61)
    assert h.refused(fields).reason == "stale_timestamp"


def test_a_timestamp_far_in_the_future_is_refused():
    h = Harness()
    result_of(h.verify(signed(notification(timestamp=NOW + timedelta(seconds=60)))))
    assert h.refused(signed(notification(timestamp=NOW + timedelta(minutes=10)))).reason == "future_timestamp"


@pytest.mark.parametrize("timestamp", ["yesterday", "2025-06-01T12:00:00", ""])
def test_an_unparsable_or_zoneless_timestamp_is_refused(timestamp):
    h = Harness()
    fields = signed(notification())
    fields["Timestamp"] = timestamp or " "
    assert h.refused(fields).reason == "bad_timestamp"


@pytest.mark.parametrize(
    "cert_url",
    [
        "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-0123456789abcdef.pem",
        "https://evil.example/sns.us-east-1.amazonaws.com/x.pem",
        "https://sns.us-east-1.amazonaws.com@evil.example/SimpleNotificationService-0123456789abcdef.pem",
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem",
        # region mismatch: the topic is in us-east-1
        "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem",
    ],
)
def test_an_untrusted_certificate_url_is_refused_and_never_requested(cert_url):
    h = Harness()
    error = h.refused(signed(notification(cert_url=cert_url)))
    assert (error.status, error.reason) == (403, "untrusted_cert_url")
    assert h.resource.requests == []


@pytest.mark.parametrize("version", [None, "3"])
def test_an_unsupported_signature_version_is_refused_without_fetching(version):
    h = Harness()
    fields = signed(notification())
    fields["SignatureVersion"] = version
    assert h.refused(fields).reason in ("unsupported_signature_version", "missing_signature")
    assert h.resource.requests == []


@pytest.mark.parametrize("field", ["Signature", "SigningCertURL"])
def test_an_unsigned_message_is_refused(field):
    h = Harness()
    fields = signed(notification())
    del fields[field]
    assert h.refused(fields).reason == "missing_signature"


def test_a_certificate_that_cannot_be_fetched_is_a_5xx():
    h = Harness()
    h.resource.routes[PATH] = (503, b"")
    error = h.refused(signed(notification()))
    assert (error.status, error.reason) == (502, "cert_fetch_failed")


def test_a_message_signed_by_another_key_is_refused():
    h = Harness()
    assert h.refused(signed(notification(), key=rsa_key("attacker"))).reason == "bad_signature"


def test_localstack_traffic_verifies_with_its_host_trusted():
    h = Harness(trusted=["127.0.0.1:4566"])
    fields = signed(notification(cert_url=LOCALSTACK_CERT_URL), key=rsa_key("localstack"), version="1")
    assert result_of(h.verify(fields)) is None
    assert h.resource.requests == ["127.0.0.1:4566" + LOCALSTACK_PATH.decode()]
    # The signature is still checked on a trusted host.
    fields["Message"] = "forged"
    assert h.refused(fields).reason == "bad_signature"


def test_localstack_traffic_is_refused_without_the_trusted_host():
    h = Harness()
    fields = signed(notification(cert_url=LOCALSTACK_CERT_URL), key=rsa_key("localstack"))
    assert h.refused(fields).reason == "untrusted_cert_url"
    assert h.resource.requests == []


def test_with_verification_off_nothing_is_fetched_but_topic_and_age_still_apply():
    h = Harness(topics=[TOPIC], verify_signatures=False)
    fields = notification()  # unsigned
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert result_of(h.verify(fields)) is None
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert h.resource.requests == []
    assert any("NOT verified" in e.get("log_format", "") for e in events)
    assert h.refused(notification(topic_arn=TOPIC + "x")).reason == "topic_not_allowed"
    assert h.refused(notification(timestamp=NOW - timedelta(hours=2))).reason == "stale_timestamp"


def test_a_malformed_topic_arn_is_refused():
    h = Harness()
    fields = signed(notification(topic_arn="not-an-arn"))
    assert h.refused(fields).reason == "bad_topic_arn"


# -- pinned by mutation testing (issue 18): each of these once let a plausible bug through ------------


def test_a_cached_certificate_does_not_lift_the_region_rule():
    h = Harness()
    result_of(h.verify(signed(notification())))  # caches the us-east-1 certificate
    # A topic in eu-west-1 naming the us-east-1 URL: refused though that URL's certificate is cached.
    fields = signed(notification(topic_arn="arn:aws:sns:eu-west-1:123456789012:uploads"))
    error = h.refused(fields)
    assert (error.status, error.reason) == (403, "untrusted_cert_url")
    with pytest.raises(TrustError, match="untrusted_cert_url"):
        h.verifier.precheck(envelope(fields))
    assert len(h.resource.requests) == 1


def test_the_future_skew_is_300_seconds_to_the_millisecond():
    h = Harness()
    result_of(h.verify(signed(notification(timestamp=NOW + timedelta(seconds=300)))))
    error = h.refused(signed(notification(timestamp=NOW + timedelta(seconds=300, milliseconds=1))))
    assert (error.status, error.reason, error.detail) == (403, "future_timestamp", "300 s ahead")


def test_the_max_age_is_pinned_to_the_millisecond():
    h = Harness(max_age=60)
    result_of(h.verify(signed(notification(timestamp=NOW - timedelta(seconds=60)))))
    error = h.refused(signed(notification(timestamp=NOW - timedelta(seconds=60, milliseconds=1))))
    assert (error.status, error.reason, error.detail) == (403, "stale_timestamp", "60 s old")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"Timestamp": "yesterday"}, "bad_timestamp"),
        ({"SignatureVersion": "3"}, "unsupported_signature_version"),
        ({"Signature": ""}, "missing_signature"),
        ({"SigningCertURL": "https://evil.example/SimpleNotificationService-1.pem"}, "untrusted_cert_url"),
        ({"TopicArn": "arn:aws:sns"}, "bad_topic_arn"),
        ({"TopicArn": "sns:aws:sns:us-east-1:1:t"}, "bad_topic_arn"),
        ({"Message": "forged"}, "bad_signature"),
        ({"MessageId": "a\nb"}, "bad_signed_field"),
    ],
)
def test_every_refusal_of_the_message_itself_is_a_403_and_counted(change, reason):
    h = Harness()
    before = failures(reason)
    error = h.refused({**signed(notification()), **change})
    assert (error.status, error.reason) == (403, reason)
    assert failures(reason) - before == 1


def test_a_foreign_topic_is_refused_with_a_403_before_the_arn_is_even_read():
    h = Harness(topics=[TOPIC])
    error = h.refused(signed(notification(topic_arn="not-an-arn")))
    assert (error.status, error.reason) == (403, "topic_not_allowed")


def test_precheck_refusals_are_counted_and_logged():
    h = Harness(topics=[TOPIC])
    before = failures("topic_not_allowed")
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        with pytest.raises(TrustError):
            h.verifier.precheck(envelope(signed(notification(topic_arn=TOPIC + "x"))))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert failures("topic_not_allowed") - before == 1
    assert [e["status"] for e in events if e.get("reason") == "topic_not_allowed"] == [403]


def test_allows_topic_is_the_allow_list_alone():
    h = Harness(topics=[TOPIC])
    assert h.verifier.allows_topic(TOPIC)
    assert not h.verifier.allows_topic(TOPIC + "x")


def test_a_refusal_after_the_download_is_counted_once():
    h = Harness()
    before = failures("bad_signature")
    fields = signed(notification())
    fields["Message"] = "forged"  # first message of the topic: the certificate is downloaded first
    assert h.refused(fields).reason == "bad_signature"
    assert failures("bad_signature") - before == 1


def test_a_failed_download_is_counted_as_a_refusal():
    h = Harness()
    h.resource.routes[PATH] = (503, b"")
    before = failures("cert_fetch_failed")
    h.refused(signed(notification()))
    assert failures("cert_fetch_failed") - before == 1


def test_a_trust_error_reads_as_its_reason_and_detail():
    assert str(TrustError(403, "bad_signature", "why")) == "bad_signature: why"
    assert str(TrustError(403, "bad_signature")) == "bad_signature"
    assert repr(TrustError(502, "x", "y")) == "TrustError(status=502, reason='x', detail='y')"


def test_the_defaults_are_an_hour_and_verification_on():
    h = Harness()
    verifier = MessageVerifier(None, HostTrust(), TopicAllowList(), h.clock)
    assert (verifier.max_age, verifier.verify_signatures) == (3600.0, True)


def test_a_cached_certificate_is_one_cache_hit_per_message():
    h = Harness()
    result_of(h.verify(signed(notification())))
    before = REGISTRY.get_sample_value("snsd_cert_cache_total", {"result": "hit"}) or 0.0
    result_of(h.verify(signed(notification())))
    assert REGISTRY.get_sample_value("snsd_cert_cache_total", {"result": "hit"}) == before + 1


def test_a_check_that_fails_for_another_reason_is_not_taken_for_a_refusal():
    from twisted.internet.defer import fail

    class BrokenChecks:
        def check(self, fields, certificate):
            return fail(RuntimeError("the checking thread is gone"))

    h = Harness(checks=BrokenChecks())
    failure_of(h.verify(signed(notification())), RuntimeError)


@pytest.mark.parametrize(
    ("change", "reason", "kept"),
    [
        ({"TopicArn": "arn:aws:sns:us-east-1:1:" + "t" * 300}, "topic_not_allowed", 200),
        ({"Timestamp": "x" * 100}, "bad_timestamp", 64),
    ],
)
def test_details_quote_at_most_a_bounded_part_of_the_input(change, reason, kept):
    h = Harness(topics=[TOPIC])
    value = next(iter(change.values()))
    error = h.refused({**signed(notification()), **change})
    assert (error.reason, error.detail) == (reason, value[:kept])


def test_a_long_malformed_topic_arn_and_version_are_quoted_in_part():
    h = Harness()
    topic = "x" * 300
    assert h.refused({**signed(notification()), "TopicArn": topic}).detail == topic[:200]
    version = "9" * 100
    assert h.refused({**signed(notification()), "SignatureVersion": version}).detail == repr(version)[:40]
