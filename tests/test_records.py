"""Parsing SNS envelopes and the S3 events inside them."""

import json
from pathlib import Path

import pytest

from snsd.envelope import BadEnvelope, parse_envelope
from snsd.records import parse_s3_message

ROOT = Path(__file__).resolve().parent.parent


def s3_event(*keys, event_name="ObjectCreated:Put", version="2.1"):
    return json.dumps(
        {
            "Records": [
                {
                    "eventVersion": version,
                    "eventSource": "aws:s3",
                    "eventName": event_name,
                    "eventTime": "2026-11-29T10:00:00.000Z",
                    "s3": {
                        "bucket": {"name": "incoming"},
                        "object": {"key": key, "size": 12, "eTag": "abc", "sequencer": "00A", "versionId": "v1"},
                    },
                }
                for key in keys
            ]
        }
    )


@pytest.mark.parametrize(
    "encoded,decoded",
    [
        ("a+b.csv", "a b.csv"),  # AWS encodes a space as +
        ("a%20b.csv", "a b.csv"),  # LocalStack as %20
        ("a%2Bb.csv", "a+b.csv"),  # a literal + arrives as %2B
        ("d%C3%A9j%C3%A0.csv", "déjà.csv"),
        ("dir/sub%2Fkey.csv", "dir/sub/key.csv"),
    ],
)
def test_keys_are_url_decoded(encoded, decoded):
    (record,) = parse_s3_message(s3_event(encoded), "m-1", "arn:aws:sns:us-east-1:1:t").records
    assert record.key == decoded


def test_every_record_is_kept_with_its_fields():
    parsed = parse_s3_message(s3_event("a.csv", "b.csv"), "m-1", "arn:aws:sns:us-east-1:1:t")
    assert [r.key for r in parsed.records] == ["a.csv", "b.csv"]
    first = parsed.records[0]
    assert (first.bucket, first.version_id, first.size, first.etag, first.sequencer) == (
        "incoming",
        "v1",
        12,
        "abc",
        "00A",
    )
    assert (first.event_name, first.event_time) == ("ObjectCreated:Put", "2026-11-29T10:00:00.000Z")
    assert (first.message_id, first.topic_arn) == ("m-1", "arn:aws:sns:us-east-1:1:t")


def test_records_are_frozen():
    (record,) = parse_s3_message(s3_event("a.csv")).records
    with pytest.raises(AttributeError):
        record.key = "other"


def test_test_event_is_ignored():
    parsed = parse_s3_message(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}))
    assert parsed.records == ()
    assert parsed.ignored == "s3:TestEvent"


@pytest.mark.parametrize(
    "message",
    [
        "not json",
        "[1, 2]",
        json.dumps({"hello": "world"}),
        s3_event("a.csv", event_name="ObjectRemoved:Delete"),
        s3_event("a.csv", version="1.0"),
    ],
)
def test_other_messages_are_ignored_with_a_reason(message):
    parsed = parse_s3_message(message)
    assert parsed.records == ()
    assert parsed.ignored


def _paths(value, prefix=()):
    """Every path into a JSON value, the value itself first."""
    yield prefix
    if isinstance(value, dict):
        for name, child in value.items():
            yield from _paths(child, prefix + (name,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, prefix + (index,))


def _replaced(value, path, new):
    if not path:
        return new
    head, rest = path[0], path[1:]
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[head] = _replaced(value[head], rest, new)
    return copy


EVENTBRIDGE_EVENT = {
    "source": "aws.s3",
    "detail-type": "Object Created",
    "time": "2026-11-29T10:00:00Z",
    "detail": {
        "bucket": {"name": "incoming"},
        "object": {"key": "a.csv", "size": 5, "etag": "e", "version-id": "v1", "sequencer": "00A"},
        "reason": "PutObject",
    },
}
WRONG_TYPES = ("text", "", 7, 2.5, True, None, [], ["x"], {}, {"name": "x"})


@pytest.mark.parametrize("event", [json.loads(s3_event("a.csv")), EVENTBRIDGE_EVENT], ids=["s3", "eventbridge"])
def test_any_value_of_the_wrong_type_is_ignored_with_a_reason_or_kept_as_a_well_typed_record(event):
    for path in _paths(event):
        for wrong in WRONG_TYPES:
            message = json.dumps(_replaced(event, path, wrong))
            parsed = parse_s3_message(message, "m-1", "arn:aws:sns:us-east-1:1:t")
            assert parsed.records or isinstance(parsed.ignored, str), (path, wrong)
            for record in parsed.records:
                assert isinstance(record.bucket, str) and record.bucket, (path, wrong)
                assert isinstance(record.key, str) and record.key, (path, wrong)
                assert isinstance(record.event_name, str) and record.event_name.startswith("ObjectCreated:")
                assert record.size is None or type(record.size) is int, (path, wrong)
                for name in ("version_id", "etag", "sequencer", "event_time"):
                    assert getattr(record, name) is None or isinstance(getattr(record, name), str), (path, name, wrong)


@pytest.mark.parametrize(
    "event,reason",
    [
        ({"Records": [{"eventVersion": "2.1", "eventName": 5, "s3": {}}]}, "eventName"),
        ({"Records": [{"eventVersion": "2.1", "eventName": "ObjectCreated:Put", "s3": {"bucket": "b"}}]}, "bucket"),
        (_replaced(EVENTBRIDGE_EVENT, ("detail", "bucket"), "incoming"), "bucket"),
        (_replaced(EVENTBRIDGE_EVENT, ("detail", "object"), "a.csv"), "key"),
    ],
)
def test_malformed_records_are_ignored_with_a_reason_that_says_what(event, reason):
    parsed = parse_s3_message(json.dumps(event))
    assert parsed.records == ()
    assert reason in parsed.ignored


def test_eventbridge_object_created():
    event = _replaced(EVENTBRIDGE_EVENT, ("detail", "object", "key"), "a b.csv")
    (record,) = parse_s3_message(json.dumps(event)).records
    assert (record.bucket, record.key, record.size) == ("incoming", "a b.csv", 5)


def test_sample_event_file_is_a_realistic_object_created_notification():
    parsed = parse_s3_message((ROOT / "event.json").read_text())
    assert parsed.records
    assert all(r.event_name.startswith("ObjectCreated:") for r in parsed.records)


def envelope(**overrides):
    fields = {
        "Type": "Notification",
        "MessageId": "m-1",
        "TopicArn": "arn:aws:sns:us-east-1:123:t",
        "Message": "{}",
        "Timestamp": "2026-11-29T10:00:00.000Z",
        "SignatureVersion": "1",
        "Signature": "c2ln",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem",
    }
    fields.update(overrides)
    return json.dumps({k: v for k, v in fields.items() if v is not None}).encode()


def test_envelope_fields_come_from_the_body():
    parsed = parse_envelope(envelope(Subject="hi"), "Notification")
    assert (parsed.type, parsed.message_id, parsed.subject, parsed.region) == ("Notification", "m-1", "hi", "us-east-1")


@pytest.mark.parametrize(
    "body,reason",
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (envelope(Type=None), "missing field: Type"),
        (envelope(MessageId=None), "missing field: MessageId"),
        (envelope(TopicArn=None), "missing field: TopicArn"),
        (envelope(Type="Gossip"), "unknown Type"),
        (envelope(Type="SubscriptionConfirmation"), "missing field: SubscribeURL"),
        (b"\xff\xfe", "not JSON"),
        (envelope(Type=1), "field Type must be a string"),
        (envelope(MessageId=[]), "field MessageId must be a string"),
        (envelope(TopicArn={}), "field TopicArn must be a string"),
        (envelope(Message=5), "field Message must be a string"),
        (envelope(Timestamp=False), "field Timestamp must be a string"),
        (envelope(Signature=7), "field Signature must be a string"),
        (envelope(SigningCertURL=["https://x"]), "field SigningCertURL must be a string"),
        (envelope(Subject={}), "field Subject must be a string"),
        (envelope(MessageId=""), "field MessageId is empty"),
    ],
)
def test_bad_envelopes_say_why(body, reason):
    with pytest.raises(BadEnvelope, match=reason):
        parse_envelope(body)


def test_type_header_must_match_the_body():
    with pytest.raises(BadEnvelope, match="header"):
        parse_envelope(envelope(), "SubscriptionConfirmation")


def test_a_malformed_record_is_left_out_and_counted_and_its_neighbours_kept():
    event = json.loads(s3_event("good.csv"))
    event["Records"] += [
        "not an object",
        {**event["Records"][0], "s3": {"bucket": {"name": "b"}}},
        {**event["Records"][0], "eventName": "ObjectRemoved:Delete"},
    ]
    parsed = parse_s3_message(json.dumps(event))
    assert [r.key for r in parsed.records] == ["good.csv"]
    assert parsed.ignored_records == 3
    assert parsed.ignored == "malformed S3 record, S3 record without bucket or key, ObjectRemoved:Delete"


def test_a_message_of_only_malformed_records_is_ignored_as_before():
    parsed = parse_s3_message(json.dumps({"Records": ["x", {"eventVersion": "2.1", "eventName": "ObjectCreated:Put"}]}))
    assert (parsed.records, parsed.ignored, parsed.ignored_records) == ((), "malformed S3 record", 2)
