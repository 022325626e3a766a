"""S3 object records: the unit of work, parsed once from an SNS ``Message``.

Two shapes carry "object created": the classic S3 event notification
(``eventVersion`` 2.x, a ``Records`` list) and the EventBridge event
(``source: aws.s3``, ``detail-type: Object Created``).  Keys in the classic shape are
URL-encoded: AWS writes a space as ``+``, LocalStack as ``%20``; ``unquote_plus``
gives the same key for both, and ``%2B`` stays a literal ``+``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from urllib.parse import unquote_plus

import orjson


@dataclass(frozen=True)
class S3ObjectRecord:
    bucket: str
    key: str
    version_id: str | None = None
    size: int | None = None
    etag: str | None = None
    sequencer: str | None = None
    event_name: str | None = None
    event_time: str | None = None
    message_id: str | None = None
    topic_arn: str | None = None

    def to_dict(self) -> dict:
        # Not dataclasses.asdict: its deep copy costs more than the rest of spooling a record.
        return {name: getattr(self, name) for name in _RECORD_FIELDS}

    @classmethod
    def from_dict(cls, data: dict) -> S3ObjectRecord:
        return cls(**{name: data.get(name) for name in cls.__dataclass_fields__})

    def to_json(self) -> str:
        """The record as the spool stores it."""
        return orjson.dumps(self.to_dict()).decode()

    @classmethod
    def from_json(cls, text: str) -> S3ObjectRecord:
        return cls.from_dict(orjson.loads(text))


_RECORD_FIELDS = tuple(f.name for f in fields(S3ObjectRecord))


@dataclass(frozen=True)
class ParsedMessage:
    """What a Notification's ``Message`` turned out to be.

    ``records``: its object-created records.  ``ignored``: why records were left out (all of
    them when ``records`` is empty), and ``ignored_records`` how many of the message's records
    that was (0 when the message is not a list of records at all).
    """

    records: tuple[S3ObjectRecord, ...] = ()
    ignored: str | None = None
    ignored_records: int = 0


def parse_s3_message(message: str, message_id: str | None = None, topic_arn: str | None = None) -> ParsedMessage:
    try:
        event = orjson.loads(message)
    except ValueError:
        return ParsedMessage(ignored="message is not JSON")
    if not isinstance(event, dict):
        return ParsedMessage(ignored="message is not a JSON object")
    if event.get("Event") == "s3:TestEvent":
        return ParsedMessage(ignored="s3:TestEvent")
    if isinstance(event.get("Records"), list):
        return _parse_notification(event["Records"], message_id, topic_arn)
    if event.get("source") == "aws.s3":
        return _parse_eventbridge(event, message_id, topic_arn)
    return ParsedMessage(ignored="not an S3 event")


def _parse_notification(raw_records: list, message_id: str | None, topic_arn: str | None) -> ParsedMessage:
    # The message is signed but its content is whatever the publisher wrote: every value is
    # type-checked, and a record that fails is left out (and counted) rather than a 500.  Its
    # neighbours still run: SNS does not retry a 200, so refusing the whole message would lose them.
    records = []
    malformed = []  # reasons of records that could never run
    skipped = []  # reasons of well-formed records that are not "object created"
    for raw in raw_records:
        if not isinstance(raw, dict):
            malformed.append("malformed S3 record")
            continue
        version = str(raw.get("eventVersion", ""))
        event_name = raw.get("eventName")
        if not version.startswith("2."):
            skipped.append(f"eventVersion {version[:16] or 'missing'}")
            continue
        if not isinstance(event_name, str):
            skipped.append("no eventName" if event_name is None else "malformed eventName")
            continue
        if not event_name.startswith("ObjectCreated:"):
            skipped.append(event_name[:64] or "no eventName")
            continue
        s3 = _object(raw.get("s3"))
        bucket = _text(_object(s3.get("bucket")).get("name"))
        obj = _object(s3.get("object"))
        key = _text(obj.get("key"))
        if bucket is None or key is None:
            malformed.append("S3 record without bucket or key")
            continue
        records.append(
            S3ObjectRecord(
                bucket=bucket,
                key=unquote_plus(key),
                version_id=_text(obj.get("versionId")),
                size=_int_or_none(obj.get("size")),
                etag=_text(obj.get("eTag")) or _text(obj.get("etag")),
                sequencer=_text(obj.get("sequencer")),
                event_name=event_name,
                event_time=_text(raw.get("eventTime")),
                message_id=message_id,
                topic_arn=topic_arn,
            )
        )
    left_out = len(malformed) + len(skipped)
    if records:
        reason = ", ".join(dict.fromkeys(malformed + skipped)) if left_out else None
        return ParsedMessage(records=tuple(records), ignored=reason, ignored_records=left_out)
    if malformed:
        reason = malformed[0]
    elif skipped:
        reason = "no ObjectCreated records: " + ", ".join(skipped)
    else:
        reason = "no records"
    return ParsedMessage(ignored=reason, ignored_records=left_out)


def _parse_eventbridge(event: dict, message_id: str | None, topic_arn: str | None) -> ParsedMessage:
    if event.get("detail-type") != "Object Created":
        return ParsedMessage(ignored=f"EventBridge {str(event.get('detail-type'))[:64]}")
    detail = event.get("detail")
    if not isinstance(detail, dict):
        return ParsedMessage(ignored="EventBridge event without detail")
    bucket = _text(_object(detail.get("bucket")).get("name"))
    obj = _object(detail.get("object"))
    key = _text(obj.get("key"))
    if bucket is None or key is None:
        return ParsedMessage(ignored="EventBridge event without bucket or key")
    # EventBridge keys are not URL-encoded.
    record = S3ObjectRecord(
        bucket=bucket,
        key=key,
        version_id=_text(obj.get("version-id")),
        size=_int_or_none(obj.get("size")),
        etag=_text(obj.get("etag")),
        sequencer=_text(obj.get("sequencer")),
        event_name="ObjectCreated:" + (_text(detail.get("reason")) or "PutObject"),
        event_time=_text(event.get("time")),
        message_id=message_id,
        topic_arn=topic_arn,
    )
    return ParsedMessage(records=(record,))


def _object(value) -> dict:
    """A JSON object, or an empty one in place of anything else (so a lookup finds nothing)."""
    return value if isinstance(value, dict) else {}


def _text(value) -> str | None:
    """A non-empty string, or None in place of anything else."""
    return value if isinstance(value, str) and value else None


def _int_or_none(value) -> int | None:
    # Not bool (an int to Python) and not a float's fraction: a size is a whole number, and one
    # that fits the spool's 64-bit JSON (1e300 would fail the write after the message was taken).
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if 0 <= number < 1 << 63 else None
