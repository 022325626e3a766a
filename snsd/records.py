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

    ``records`` is non-empty only for object-created events; otherwise ``ignored`` says why.
    """

    records: tuple[S3ObjectRecord, ...] = ()
    ignored: str | None = None


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
    records = []
    skipped = []
    for raw in raw_records:
        if not isinstance(raw, dict):
            return ParsedMessage(ignored="malformed S3 record")
        version = str(raw.get("eventVersion", ""))
        event_name = raw.get("eventName") or ""
        if not version.startswith("2."):
            skipped.append(f"eventVersion {version or 'missing'}")
            continue
        if not event_name.startswith("ObjectCreated:"):
            skipped.append(event_name or "no eventName")
            continue
        s3 = raw.get("s3")
        bucket = (s3 or {}).get("bucket", {}).get("name") if isinstance(s3, dict) else None
        obj = (s3 or {}).get("object") if isinstance(s3, dict) else None
        if not isinstance(bucket, str) or not isinstance(obj, dict) or not isinstance(obj.get("key"), str):
            return ParsedMessage(ignored="S3 record without bucket or key")
        records.append(
            S3ObjectRecord(
                bucket=bucket,
                key=unquote_plus(obj["key"]),
                version_id=obj.get("versionId") or None,
                size=_int_or_none(obj.get("size")),
                etag=obj.get("eTag") or obj.get("etag"),
                sequencer=obj.get("sequencer"),
                event_name=event_name,
                event_time=raw.get("eventTime"),
                message_id=message_id,
                topic_arn=topic_arn,
            )
        )
    if records:
        return ParsedMessage(records=tuple(records))
    return ParsedMessage(ignored="no ObjectCreated records: " + ", ".join(skipped) if skipped else "no records")


def _parse_eventbridge(event: dict, message_id: str | None, topic_arn: str | None) -> ParsedMessage:
    if event.get("detail-type") != "Object Created":
        return ParsedMessage(ignored=f"EventBridge {str(event.get('detail-type'))[:64]}")
    detail = event.get("detail")
    if not isinstance(detail, dict):
        return ParsedMessage(ignored="EventBridge event without detail")
    bucket = (detail.get("bucket") or {}).get("name")
    obj = detail.get("object") or {}
    if not isinstance(bucket, str) or not isinstance(obj.get("key"), str):
        return ParsedMessage(ignored="EventBridge event without bucket or key")
    # EventBridge keys are not URL-encoded.
    record = S3ObjectRecord(
        bucket=bucket,
        key=obj["key"],
        version_id=obj.get("version-id") or None,
        size=_int_or_none(obj.get("size")),
        etag=obj.get("etag"),
        sequencer=obj.get("sequencer"),
        event_name="ObjectCreated:" + str(detail.get("reason", "PutObject")),
        event_time=event.get("time"),
        message_id=message_id,
        topic_arn=topic_arn,
    )
    return ParsedMessage(records=(record,))


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
