"""Subscription confirmation without SSRF: only the signed topic's ConfirmSubscription on a trusted host."""

from __future__ import annotations

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock

from snsd.trust.confirm import SubscriptionConfirmer, parse_confirmation
from snsd.trust.errors import TrustError
from snsd.trust.hosts import HostTrust
from tests.trust_helpers import (
    TOPIC,
    RecordingResource,
    envelope,
    failure_of,
    notification,
    result_of,
    subscription_confirmation,
)

SUBSCRIPTION_ARN = TOPIC + ":2bcfbf39-05c3-41de-beaa-fcfcc21c8f55"
ANSWER = f"""<ConfirmSubscriptionResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">
  <ConfirmSubscriptionResult>
    <SubscriptionArn>{SUBSCRIPTION_ARN}</SubscriptionArn>
  </ConfirmSubscriptionResult>
  <ResponseMetadata><RequestId>075ecce8-8dac-11e1-bf80-f781d96e9307</RequestId></ResponseMetadata>
</ConfirmSubscriptionResponse>""".encode()


class Harness:
    def __init__(self, status=200, body=ANSWER, trusted=()):
        self.clock = Clock()
        self.resource = RecordingResource({b"/": (status, body)})
        self.stub = StubTreq(self.resource)
        self.confirmer = SubscriptionConfirmer(self.stub, HostTrust(trusted), timeout=10.0, clock=self.clock)

    def confirm(self, fields):
        d = self.confirmer.confirm(envelope(fields))
        self.stub.flush()
        return d


def test_confirms_and_returns_the_subscription_arn():
    h = Harness()
    fields = subscription_confirmation()
    assert result_of(h.confirm(fields)) == SUBSCRIPTION_ARN
    assert h.resource.requests == [fields["SubscribeURL"].removeprefix("https://")]


def test_confirms_through_a_trusted_emulator_host():
    h = Harness(trusted=["127.0.0.1:4566"])
    url = f"http://127.0.0.1:4566/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=tok"
    assert result_of(h.confirm(subscription_confirmation(subscribe_url=url, token="tok"))) == SUBSCRIPTION_ARN
    assert h.resource.requests == [url.removeprefix("http://")]


@pytest.mark.parametrize(
    "subscribe_url",
    [
        f"https://evil.example/?Action=ConfirmSubscription&TopicArn={TOPIC}",
        f"https://sns.us-east-1.amazonaws.com.evil.example/?Action=ConfirmSubscription&TopicArn={TOPIC}",
        f"https://sns.us-east-1.amazonaws.com@169.254.169.254/?Action=ConfirmSubscription&TopicArn={TOPIC}",
        f"http://169.254.169.254/latest/meta-data/?Action=ConfirmSubscription&TopicArn={TOPIC}",
        f"http://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={TOPIC}",
        f"https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={TOPIC}",
        f"http://127.0.0.1:4566/?Action=ConfirmSubscription&TopicArn={TOPIC}",
    ],
)
def test_a_subscribe_url_on_an_untrusted_host_is_never_requested(subscribe_url):
    h = Harness()
    error = failure_of(h.confirm(subscription_confirmation(subscribe_url=subscribe_url)), TrustError)
    assert (error.status, error.reason) == (403, "untrusted_subscribe_url")
    assert h.resource.requests == []


@pytest.mark.parametrize(
    "query",
    [
        f"Action=Unsubscribe&TopicArn={TOPIC}",
        f"TopicArn={TOPIC}",
        f"Action=ConfirmSubscription&Action=ConfirmSubscription&TopicArn={TOPIC}",
        "Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-east-1:123456789012:other",
        "Action=ConfirmSubscription",
        f"Action=ConfirmSubscription&TopicArn={TOPIC}&TopicArn=arn:aws:sns:us-east-1:1:x",
        f"Action=ConfirmSubscription&TopicArn={TOPIC}&Token=not-the-signed-token",
    ],
)
def test_action_topic_or_token_mismatch_is_refused_and_never_requested(query):
    h = Harness()
    fields = subscription_confirmation(subscribe_url=f"https://sns.us-east-1.amazonaws.com/?{query}")
    error = failure_of(h.confirm(fields), TrustError)
    assert (error.status, error.reason) == (403, "subscribe_url_mismatch")
    assert h.resource.requests == []


def test_only_subscription_confirmations_are_confirmed():
    h = Harness()
    for fields in (notification(), subscription_confirmation(message_type="UnsubscribeConfirmation")):
        assert failure_of(h.confirm(fields), TrustError).status == 400
    assert h.resource.requests == []


@pytest.mark.parametrize(
    "status, body",
    [
        (500, ANSWER),
        (403, b"<ErrorResponse/>"),
        (200, b"not xml"),
        (200, b"<ConfirmSubscriptionResponse><ConfirmSubscriptionResult/></ConfirmSubscriptionResponse>"),
        (
            200,
            b"<Other><ConfirmSubscriptionResult><SubscriptionArn>x</SubscriptionArn></ConfirmSubscriptionResult></Other>",
        ),
        (200, ANSWER + b" " * 70000),
    ],
)
def test_a_failed_or_unparsable_confirmation_is_a_5xx(status, body):
    h = Harness(status=status, body=body)
    error = failure_of(h.confirm(subscription_confirmation()), TrustError)
    assert (error.status, error.reason) == (502, "confirmation_failed")
    assert len(h.resource.requests) == 1


def test_a_confirmation_that_never_answers_times_out():
    h = Harness()
    h.resource.hang.add(b"/")
    d = h.confirm(subscription_confirmation())
    h.clock.advance(9.9)
    assert not d.called
    h.clock.advance(0.1)
    assert failure_of(d, TrustError).reason == "confirmation_failed"


def test_the_xml_parser_refuses_entities():
    bomb = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>
<ConfirmSubscriptionResponse><ConfirmSubscriptionResult><SubscriptionArn>&b;</SubscriptionArn>
</ConfirmSubscriptionResult></ConfirmSubscriptionResponse>"""
    with pytest.raises(ValueError, match="DTD"):
        parse_confirmation(bomb)
    external = b"""<!doctype r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>"""
    with pytest.raises(ValueError, match="DTD"):
        parse_confirmation(external)


def test_the_answer_is_read_whatever_its_namespace():
    plain = ANSWER.replace(b' xmlns="http://sns.amazonaws.com/doc/2010-03-31/"', b"")
    assert parse_confirmation(plain) == SUBSCRIPTION_ARN
    assert parse_confirmation(ANSWER) == SUBSCRIPTION_ARN


@pytest.mark.parametrize(
    "body",
    [
        b"<!DOCTYPE r><ConfirmSubscriptionResponse/>",  # a DTD without entities parses fine otherwise
        b'<?xml version="1.0"?><!doctype r SYSTEM "x"><r/>',
        b"<r><!ENTITY x 'y'></r>",
    ],
)
def test_any_dtd_or_entity_declaration_is_refused_before_parsing(body):
    with pytest.raises(ValueError, match="DTDs are not accepted"):
        parse_confirmation(body)


# -- pinned by mutation testing (issue 18) ----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        # a SubscriptionArn elsewhere than in ConfirmSubscriptionResult
        b"<ConfirmSubscriptionResponse><ResponseMetadata><SubscriptionArn>x</SubscriptionArn></ResponseMetadata>"
        b"</ConfirmSubscriptionResponse>",
        # an empty or blank SubscriptionArn
        b"<ConfirmSubscriptionResponse><ConfirmSubscriptionResult><SubscriptionArn> </SubscriptionArn>"
        b"</ConfirmSubscriptionResult></ConfirmSubscriptionResponse>",
    ],
)
def test_only_a_subscription_arn_in_the_result_counts(body):
    with pytest.raises(ValueError, match="no SubscriptionArn"):
        parse_confirmation(body)


def test_other_elements_of_the_result_are_not_taken_for_the_arn():
    body = (
        b"<ConfirmSubscriptionResponse><ConfirmSubscriptionResult><Other>not it</Other>"
        b"<SubscriptionArn> arn:x </SubscriptionArn></ConfirmSubscriptionResult></ConfirmSubscriptionResponse>"
    )
    assert parse_confirmation(body) == "arn:x"


def test_a_blank_token_in_the_subscribe_url_is_not_the_signed_token():
    h = Harness()
    url = f"https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token="
    error = failure_of(h.confirm(subscription_confirmation(subscribe_url=url, token="t")), TrustError)
    assert (error.status, error.reason) == (403, "subscribe_url_mismatch")
    assert h.resource.requests == []


def test_the_defaults_and_the_reactor_as_clock():
    from twisted.internet import reactor

    confirmer = SubscriptionConfirmer(None, HostTrust())
    assert (confirmer.timeout, confirmer.max_bytes, confirmer._clock) == (10.0, 65536, reactor)


def test_refusals_and_outcomes_are_counted_and_logged():
    from prometheus_client import REGISTRY
    from twisted.logger import globalLogPublisher

    def refused():
        return REGISTRY.get_sample_value("snsd_signature_failures_total", {"reason": "subscribe_url_mismatch"}) or 0

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        before = refused()
        h = Harness()
        bad = subscription_confirmation(subscribe_url=f"https://sns.us-east-1.amazonaws.com/?TopicArn={TOPIC}")
        failure_of(h.confirm(bad), TrustError)
        assert refused() - before == 1
        good = subscription_confirmation()
        result_of(h.confirm(good))
        failure_of(Harness(status=500).confirm(good), TrustError)
    finally:
        globalLogPublisher.removeObserver(events.append)
    logged = {e["log_format"].split(" ")[0]: e for e in events if "message_id" in e}
    assert logged["not"]["reason"] == "subscribe_url_mismatch"
    assert logged["confirmed"]["subscription_arn"] == SUBSCRIPTION_ARN
    assert logged["confirming"]["detail"] == "HTTP 500"


def test_a_failed_confirmation_says_why():
    error = failure_of(Harness(status=500).confirm(subscription_confirmation()), TrustError)
    assert error.detail == "HTTP 500"
