"""The events the publisher scripts send, and the Publish request they build.

Generated events and the shipped ``event.json`` must come back out of snsd's own parser with the
exact keys that went in; the Publish request must be a SigV4-signed Query API call.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from snsd.records import parse_s3_message
from snsd.tools import build_s3_event, load_message
from snsd.tools.publish import parse_response, publish_request, topic_arn_for

ROOT = Path(__file__).resolve().parent.parent
TRICKY_KEYS = ["uploads/plain.csv", "uploads/with space.csv", "uploads/a+b.csv", "uploads/été/naïve 1+1=2.csv"]


@pytest.mark.parametrize("key", TRICKY_KEYS)
def test_generated_event_round_trips_the_exact_key(key):
    records = parse_s3_message(json.dumps(build_s3_event("incoming", [key]))).records
    assert [(r.bucket, r.key, r.event_name) for r in records] == [("incoming", key, "ObjectCreated:Put")]


def test_generated_keys_are_url_encoded_like_aws():
    encoded = build_s3_event("b", ["a b+c/é"])["Records"][0]["s3"]["object"]["key"]
    assert encoded == "a+b%2Bc/%C3%A9"


def test_several_keys_give_one_record_each_in_order():
    records = parse_s3_message(json.dumps(build_s3_event("incoming", TRICKY_KEYS))).records
    assert [r.key for r in records] == TRICKY_KEYS
    assert len({r.sequencer for r in records}) == len(TRICKY_KEYS)


def test_event_json_is_one_object_created_put_in_incoming():
    event = json.loads((ROOT / "event.json").read_text())
    [raw] = event["Records"]
    assert (raw["eventVersion"], raw["awsRegion"], raw["eventName"]) == ("2.1", "us-east-1", "ObjectCreated:Put")
    [record] = parse_s3_message(json.dumps(event)).records
    assert record.bucket == "incoming"
    assert record.key == "uploads/2026/11/sample data été+1.csv"
    assert record.size == 48213 and record.etag and record.sequencer and record.version_id


def test_load_message_prefers_keys_then_a_file_then_event_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    generated = json.loads(load_message(None, None, None))
    assert [r["s3"]["bucket"]["name"] for r in generated["Records"]] == ["incoming"]
    (tmp_path / "event.json").write_text('{"from": "event.json"}')
    assert json.loads(load_message(None, None, None)) == {"from": "event.json"}
    (tmp_path / "other.json").write_text('{"from": "other"}')
    assert json.loads(load_message("other.json", None, None)) == {"from": "other"}
    keyed = json.loads(load_message("other.json", "bkt", ["k"]))
    assert keyed["Records"][0]["s3"]["bucket"]["name"] == "bkt"
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError):
        load_message("broken.json", None, None)


def test_publish_request_is_a_signed_query_api_publish():
    url, body, headers = publish_request(
        "http://127.0.0.1:4566", "arn:aws:sns:us-east-1:1:t", '{"a": "é"}', "us-east-1"
    )
    assert url == "http://127.0.0.1:4566/"
    params = {k: v[0] for k, v in parse_qs(body.decode()).items()}
    assert params == {
        "Action": "Publish",
        "Version": "2010-03-31",
        "TopicArn": "arn:aws:sns:us-east-1:1:t",
        "Message": '{"a": "é"}',
    }
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=")
    assert "/us-east-1/sns/aws4_request" in headers["Authorization"]
    assert "X-Amz-Date" in headers


def test_unsigned_publish_request_has_no_authorization():
    _, _, headers = publish_request("http://h", "arn:aws:sns:us-east-1:1:t", "{}", "us-east-1", sign=False)
    assert "Authorization" not in headers


def test_topic_names_become_localstack_arns():
    assert topic_arn_for("t", "eu-west-1") == "arn:aws:sns:eu-west-1:000000000000:t"
    assert topic_arn_for("arn:aws:sns:us-east-1:1:t", "eu-west-1") == "arn:aws:sns:us-east-1:1:t"


def test_parse_response_reads_message_id_and_errors_from_xml_and_json():
    ok = parse_response(
        200,
        '<PublishResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><PublishResult>'
        "<MessageId>m-1</MessageId></PublishResult></PublishResponse>",
    )
    assert (ok.message_id, ok.error) == ("m-1", None)
    error = parse_response(
        404,
        "<ErrorResponse><Error><Code>NotFound</Code><Message>Topic does not exist</Message></Error></ErrorResponse>",
    )
    assert (error.message_id, error.error) == (None, "NotFound: Topic does not exist")
    assert parse_response(200, json.dumps({"MessageId": "m-2"})).message_id == "m-2"
