"""Test helpers for the trust layer: real RSA keys, real self-signed certificates, signed envelopes,
and a small HTTP resource (served through ``treq.testing.StubTreq``) that records every request.

Signing itself lives in :mod:`snsd.trust.signing` (the load tool needs it too); this module only
adds the test-only parts: certificate generation and canned envelopes.
"""

from __future__ import annotations

import functools
import json
import os
import uuid
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from snsd.envelope import SNSEnvelope, parse_envelope
from snsd.trust.signing import sign_fields

#: "Now" for tests: Clock().advance(NOW) puts the fake clock here.
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
TOPIC = "arn:aws:sns:us-east-1:123456789012:uploads"
CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"
LOCALSTACK_CERT_URL = "http://127.0.0.1:4566/_aws/sns/SimpleNotificationService-6c6f63616c737461636b.pem"


@functools.cache
def rsa_key(name: str = "sns") -> rsa.RSAPrivateKey:
    """One 2048-bit key per name per test run (generation is the slow part).

    With ``SNSD_TEST_KEY_DIR`` set (scripts/mutate.py sets it: it runs the tests hundreds of
    times), keys are kept there as PEM files and reused across runs.
    """
    folder = os.environ.get("SNSD_TEST_KEY_DIR")
    path = os.path.join(folder, f"{name}.pem") if folder else None
    if path and os.path.exists(path):
        with open(path, "rb") as f:
            return serialization.load_pem_private_key(f.read(), password=None)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if path:
        with open(path + ".tmp", "wb") as f:
            f.write(private_key_pem(key))
        os.replace(path + ".tmp", path)
    return key


@functools.cache
def ec_key() -> ec.EllipticCurvePrivateKey:
    """A key SNS never signs with: certificates with it must be refused."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_certificate(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    common_name: str = "sns.amazonaws.com",
    not_before: datetime = NOW - timedelta(days=30),
    not_after: datetime = NOW + timedelta(days=30),
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def iso(moment: datetime) -> str:
    """SNS's timestamp format: 2012-05-02T00:54:06.655Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def notification(
    message: str = '{"Records": []}',
    topic_arn: str = TOPIC,
    subject: str | None = None,
    timestamp: datetime = NOW,
    cert_url: str = CERT_URL,
    message_id: str | None = None,
) -> dict:
    fields = {
        "Type": "Notification",
        "MessageId": message_id or str(uuid.uuid4()),
        "TopicArn": topic_arn,
        "Message": message,
        "Timestamp": iso(timestamp),
        "SigningCertURL": cert_url,
        "UnsubscribeURL": f"https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={topic_arn}:x",
    }
    if subject is not None:
        fields["Subject"] = subject
    return fields


def subscription_confirmation(
    topic_arn: str = TOPIC,
    token: str = "2336412f37fb687f5d51e6e2425ba1f30",
    subscribe_url: str | None = None,
    timestamp: datetime = NOW,
    cert_url: str = CERT_URL,
    message_type: str = "SubscriptionConfirmation",
) -> dict:
    region = topic_arn.split(":")[3]
    if subscribe_url is None:
        subscribe_url = (
            f"https://sns.{region}.amazonaws.com/?Action=ConfirmSubscription&TopicArn={topic_arn}&Token={token}"
        )
    return {
        "Type": message_type,
        "MessageId": str(uuid.uuid4()),
        "Token": token,
        "TopicArn": topic_arn,
        "Message": f"You have chosen to subscribe to the topic {topic_arn}.",
        "SubscribeURL": subscribe_url,
        "Timestamp": iso(timestamp),
        "SigningCertURL": cert_url,
    }


def signed(fields: dict, key: rsa.RSAPrivateKey | None = None, version: str = "1") -> dict:
    return sign_fields(fields, private_key_pem(key or rsa_key()), version)


def envelope(fields: dict) -> SNSEnvelope:
    return parse_envelope(json.dumps(fields).encode())


class RecordingResource(Resource):
    """Serves canned answers by path and records every request it was asked (host + URI).

    ``routes`` maps a path (bytes, without query) to ``(status, body)``; unknown paths get 404.
    Paths in ``hang`` never answer (for timeouts).
    """

    isLeaf = True

    def __init__(self, routes: dict[bytes, tuple[int, bytes]] | None = None) -> None:
        super().__init__()
        self.routes = dict(routes or {})
        self.hang: set[bytes] = set()
        self.requests: list[str] = []
        self.pending: list = []

    def render_GET(self, request):
        host = (request.getHeader(b"host") or b"").decode()
        self.requests.append(f"{host}{request.uri.decode()}")
        if request.path in self.hang:
            self.pending.append(request)
            return NOT_DONE_YET
        status, body = self.routes.get(request.path, (404, b"not found"))
        request.setResponseCode(status)
        return body

    def answer_pending(self) -> None:
        """Answer the requests held by ``hang`` with their routes (then ``stub.flush()``)."""
        pending, self.pending = self.pending, []
        for request in pending:
            status, body = self.routes.get(request.path, (404, b"not found"))
            request.setResponseCode(status)
            request.write(body)
            request.finish()

    def drop_pending(self) -> None:
        """Send half an answer to the held requests, then drop the connection."""
        pending, self.pending = self.pending, []
        for request in pending:
            request.setHeader(b"content-length", b"1000")
            request.write(b"-----BEGIN CERT")
            request.channel.transport.loseConnection()


def result_of(d: Deferred):
    """The result of an already-fired Deferred (raising its failure); fails if it has not fired."""
    outcome: list = []
    d.addBoth(outcome.append)
    assert outcome, "Deferred has not fired"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def failure_of(d: Deferred, *types: type[BaseException]) -> BaseException:
    """The exception an already-fired Deferred failed with (must be one of ``types``)."""
    outcome: list = []
    d.addBoth(outcome.append)
    assert outcome, "Deferred has not fired"
    assert isinstance(outcome[0], Failure), f"Deferred succeeded with {outcome[0]!r}"
    assert outcome[0].check(*types), f"unexpected failure {outcome[0]!r}"
    return outcome[0].value
