"""What travels on the queue, and what a worker makes of each body it receives.

Three kinds of body are accepted:

- **snsd record**: ``{"snsd": "record", "v": 1, "record": {...}}``, one per record, as the
  listener's forwarder sends them.  The listener verified the SNS message before spooling it.
- **SNS envelope**: an SNS→SQS subscription delivers the signed notification as the body; it is
  verified with the same trust code as an HTTP POST (signature, certificate host, topic
  allow-list).  Its age is not held against it: a message may wait in the queue for days.
- **S3 event notification**: S3 sends its event straight to the queue (``Records``), or its
  ``s3:TestEvent`` when the notification is configured.  Nothing signs it; the queue's access
  policy decides who may send (``snsd-wire`` allows the bucket only).  An SNS subscription with
  raw message delivery puts the same body on the queue, and nothing tells the two apart: see
  docs/scaling.md.

Anything else is a :class:`Discard`: deleted with a log line and a metric, never retried.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from snsd.envelope import NOTIFICATION, BadEnvelope, parse_envelope
from snsd.records import S3ObjectRecord, parse_s3_message
from snsd.trust.errors import TrustError

RECORD_KIND = "record"
VERSION = 1


def encode_record(record: S3ObjectRecord) -> str:
    """A spooled record as the forwarder sends it."""
    return orjson.dumps({"snsd": RECORD_KIND, "v": VERSION, "record": record.to_dict()}).decode()


@dataclass(frozen=True)
class Work:
    """The records a message asks for, and what kind of message it was."""

    kind: str  # record | sns | s3
    records: tuple[S3ObjectRecord, ...]


@dataclass(frozen=True)
class Discard:
    """A message that can never produce work: delete it and say why."""

    reason: str  # a short, fixed label (the metric's) ...
    detail: str = ""  # ... and what exactly, for the log line


@dataclass(frozen=True)
class Later:
    """A message that cannot be judged now (the signing certificate could not be fetched): leave it."""

    reason: str


async def decode(body: str, sqs_message_id: str, verifier) -> Work | Discard | Later:
    """What ``body`` asks for.  ``verifier`` checks SNS envelopes (a :class:`MessageVerifier`)."""
    try:
        data = orjson.loads(body)
    except ValueError:
        return Discard("malformed", "body is not JSON")
    if not isinstance(data, dict):
        return Discard("malformed", "body is not a JSON object")
    if data.get("snsd") == RECORD_KIND:
        return _record(data)
    if "Type" in data and "MessageId" in data:
        return await _sns(body, verifier)
    return _s3(body, sqs_message_id, None, "s3")


def _record(data: dict) -> Work | Discard:
    if data.get("v") != VERSION:
        return Discard("unknown_version", f"snsd record message version {data.get('v')!r}")
    raw = data.get("record")
    if not isinstance(raw, dict) or not isinstance(raw.get("bucket"), str) or not isinstance(raw.get("key"), str):
        return Discard("malformed", "snsd record message without bucket or key")
    try:
        return Work(RECORD_KIND, (S3ObjectRecord.from_dict(raw),))
    except (TypeError, ValueError) as e:
        return Discard("malformed", f"snsd record message: {e}")


async def _sns(body: str, verifier) -> Work | Discard | Later:
    try:
        envelope = parse_envelope(body.encode("utf-8"))
    except BadEnvelope as e:
        return Discard("malformed", f"SNS envelope: {e}")
    if envelope.type != NOTIFICATION:
        # Same-account SNS→SQS subscriptions need no confirmation; anything else is not work.
        return Discard("not_a_notification", f"SNS {envelope.type} from {envelope.topic_arn}")
    try:
        await verifier.verify(envelope)
    except TrustError as e:
        if e.status >= 500:  # the certificate could not be fetched: a passing trouble
            return Later(f"{e.reason}: {e.detail}")
        return Discard(f"untrusted_{e.reason}", f"SNS message {envelope.message_id}: {e.detail or e.reason}")
    return _s3(envelope.message, envelope.message_id, envelope.topic_arn, "sns")


def _s3(message: str, message_id: str, topic_arn: str | None, kind: str) -> Work | Discard:
    parsed = parse_s3_message(message, message_id, topic_arn)
    if not parsed.records:
        reason = parsed.ignored or "no records"
        label = "s3_test_event" if reason == "s3:TestEvent" else "no_work"
        return Discard(label, reason)
    return Work(kind, parsed.records)
