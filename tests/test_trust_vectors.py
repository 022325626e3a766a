"""Messages genuinely signed by Amazon SNS (tests/vectors/, sources in its README), through the daemon
built the normal way: ``build_daemon`` with ``--cert-dir tests/vectors/certs``, a Clock set to each
message's time (which drives the certificate's dates too: every certificate here has expired since), and
HTTP through StubTreq against the daemon's own resource.  No request to AWS is made: the certificates are
preloaded, and a SubscribeURL is answered by a recording stand-in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater

from snsd.config import SNSDOptions
from snsd.daemon import build_daemon
from snsd.trust.certs import load_certificate_dir
from snsd.trust.verifier import parse_timestamp
from tests.trust_helpers import RecordingResource
from tests.web_harness import CONFIRM_XML, CONFIRMED_ARN

VECTORS = Path(__file__).parent / "vectors"
CERTS = VECTORS / "certs"
FILES = sorted(p.name for p in VECTORS.glob("*.json"))
SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}


def vector(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


def test_the_vectors_cover_both_versions_subjects_and_every_type():
    kinds = {(v["Type"], v["SignatureVersion"], "Subject" in v) for v in map(vector, FILES)}
    assert {("Notification", "1", True), ("Notification", "2", True)} <= kinds
    assert {("Notification", "1", False), ("Notification", "2", False)} <= kinds
    assert {t for t, _, _ in kinds} == set(SIGNED)


class Daemon:
    """build_daemon as twistd's plugin calls it, but for the clock and the outbound HTTP client."""

    def __init__(self, tmp_path, at: float, *args: str):
        options = SNSDOptions(environ={})
        options.parseOptions(
            ["--port", "tcp:0:interface=127.0.0.1", "--admin-port", "tcp:0:interface=127.0.0.1",
             "--spool", ":memory:", "--dry-run",
             "--results", str(tmp_path / "results.jsonl"), "--job", "snsd.jobs.head:head_object",
             "--cert-dir", str(CERTS), *args]
        )  # fmt: skip
        self.clock = Clock()
        self.clock.advance(at)
        self.aws = RecordingResource({b"/": (200, CONFIRM_XML)})
        self.aws_http = StubTreq(self.aws)
        self.daemon = build_daemon(reactor, options.settings, http_client=self.aws_http, clock=self.clock)
        self.client = StubTreq(self.daemon.endpoint.resource())

    async def start(self):
        self.daemon.startService()
        for _ in range(100):  # reactor turns, not time: the spool opens on the next one
            if self.daemon.dispatcher.ready:
                return self
            await deferLater(reactor, 0, lambda: None)
        raise AssertionError("the spool did not open")

    async def post(self, fields: dict) -> tuple[int, object]:
        response = await self.client.post(
            "http://snsd.test/",
            data=json.dumps(fields).encode(),
            headers={"Content-Type": ["text/plain; charset=UTF-8"], "x-amz-sns-message-type": [fields["Type"]]},
        )
        for _ in range(3):
            self.aws_http.flush()
            self.client.flush()
        body = await response.content()
        return response.code, json.loads(body)

    async def stop(self):
        await self.daemon.stopService()


def tamper(fields: dict, name: str) -> dict:
    """``fields`` with signed field ``name`` changed as a forger would: still well-formed."""
    changed = dict(fields)
    value = fields.get(name)
    if name == "Subject" and value is None:
        changed["Subject"] = "added"
    elif name == "Timestamp":
        changed[name] = value[:-2] + ("0" if value[-2] != "0" else "1") + "Z"  # a millisecond apart
    elif name == "Type":
        other = {"SubscriptionConfirmation": "UnsubscribeConfirmation"}
        changed[name] = other.get(value, "SubscriptionConfirmation")
    elif name == "SignatureVersion":
        changed[name] = {"1": "2", "2": "1"}[value]
    elif name in ("MessageId", "Token"):
        changed[name] = value[:-1] + ("0" if value[-1] != "0" else "1")
    elif name == "SubscribeURL":
        changed[name] = value[:-1] + ("0" if value[-1] != "0" else "1")  # another Token in it
    else:
        changed[name] = value + "x"
    assert changed != fields
    return changed


def genuine_answer(fields: dict) -> tuple[int, object]:
    return {
        "Notification": (200, {"status": "ignored", "reason": "message is not JSON"}),
        "SubscriptionConfirmation": (200, {"status": "confirmed", "subscription_arn": CONFIRMED_ARN}),
        "UnsubscribeConfirmation": (200, {"status": "ok"}),
    }[fields["Type"]]


@pytest.mark.parametrize("name", FILES)
@pytest_twisted.ensureDeferred
async def test_a_genuine_message_verifies_and_any_signed_field_changed_is_refused(tmp_path, name):
    fields = vector(name)
    snsd = await Daemon(tmp_path, parse_timestamp(fields["Timestamp"]) + 1).start()
    try:
        # Tampered copies first: the genuine one, once accepted, would make them duplicates.
        for field in SIGNED[fields["Type"]] + ("Signature", "SignatureVersion"):
            if field not in fields and field != "Subject":
                continue
            status, body = await snsd.post(tamper(fields, field))
            if field == "Type" and fields["Type"] == "Notification":
                # A Notification retyped lacks the confirmation fields: malformed before it is forged.
                assert (status, body["error"].startswith("missing field")) == (400, True), field
            else:
                assert (status, body) in ((403, {"error": "bad_signature"}), (403, {"error": "bad_signed_field"})), (
                    field
                )
        if "Subject" in fields:  # and a Subject removed
            removed = {k: v for k, v in fields.items() if k != "Subject"}
            assert await snsd.post(removed) == (403, {"error": "bad_signature"})
        assert snsd.aws.requests == []  # no confirmation was attempted for any of them
        assert await snsd.post(fields) == genuine_answer(fields)
        confirmations = 1 if fields["Type"] == "SubscriptionConfirmation" else 0
        assert len(snsd.aws.requests) == confirmations
        if confirmations:
            assert snsd.aws.requests[0] == "sns.us-west-2.amazonaws.com" + fields["SubscribeURL"].split(".com", 1)[1]
    finally:
        await snsd.stop()


@pytest_twisted.ensureDeferred
async def test_the_clock_drives_the_certificate_dates(tmp_path):
    fields = vector("php-notification-no-subject-v1.json")
    expired = load_certificate_dir(str(CERTS))[fields["SigningCertURL"].rpartition("/")[2]].not_valid_after_utc
    years = str(10 * 365 * 86400)
    snsd = await Daemon(tmp_path, expired.timestamp(), "--max-age", years, "--dedup-ttl", years).start()
    try:
        assert await snsd.post(fields) == (403, {"error": "untrusted_certificate"})
        assert snsd.aws.requests == []  # refused, not downloaded instead
    finally:
        await snsd.stop()


@pytest_twisted.ensureDeferred
async def test_a_preloaded_certificate_does_not_lift_the_region_rule(tmp_path):
    fields = vector("java-notification-no-subject-v2.json")
    # The same (preloaded) file name on another region's host: the URL rule refuses it first.
    moved = dict(fields, SigningCertURL=fields["SigningCertURL"].replace("us-west-2", "us-east-1"))
    snsd = await Daemon(tmp_path, parse_timestamp(fields["Timestamp"])).start()
    try:
        assert await snsd.post(moved) == (403, {"error": "untrusted_cert_url"})
    finally:
        await snsd.stop()
