"""The whole loop against a real LocalStack on the host:
S3 upload -> S3 event notification -> SNS topic -> signed HTTP POST -> snsd -> job -> result line.

One LocalStack and one daemon per session (signature verification on, LocalStack's host trusted);
the breaker test gets its own daemon so its failures do not disturb the others, and the one-command
run (`python -m snsd_devtools.run`) starts its own on a free port against the same LocalStack.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from urllib.parse import urlsplit

import boto3
import pytest

from snsd.tools.wire import find_subscription, wire
from snsd_devtools.localstack import free_port, is_healthy
from tests.process_helpers import Daemon, poll_until

pytestmark = pytest.mark.localstack

RULES = """
- name: people
  key: "people/*.csv"
  schema:
    fields:
      - {name: id, type: integer, constraints: {required: true, unique: true}}
      - {name: age, type: integer, constraints: {minimum: 0, maximum: 150}}
"""


def trusted(localstack_url):
    return f"127.0.0.1:{urlsplit(localstack_url).port}"


def client(service, aws_env):
    return boto3.client(
        service,
        endpoint_url=aws_env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


@pytest.fixture(scope="session")
def s3(aws_env):
    return client("s3", aws_env)


@pytest.fixture(scope="session")
def sns(aws_env):
    return client("sns", aws_env)


def start_wired_daemon(workdir, localstack_url, aws_env, bucket, *args):
    (workdir / "rules.yaml").parent.mkdir(parents=True, exist_ok=True)
    (workdir / "rules.yaml").write_text(RULES)
    daemon = Daemon(
        workdir, "--trusted-host", trusted(localstack_url), "--rules", str(workdir / "rules.yaml"), *args, env=aws_env
    ).start()
    wiring = wire(localstack_url, daemon.url + "/", bucket=bucket, topic=f"{bucket}-topic", wait_confirmed_seconds=30)
    return daemon, wiring


@pytest.fixture(scope="session")
def loop(tmp_path_factory, localstack_url, aws_env):
    bucket = f"e2e-{uuid.uuid4().hex[:8]}"
    daemon, wiring = start_wired_daemon(tmp_path_factory.mktemp("e2e"), localstack_url, aws_env, bucket)
    yield daemon, wiring
    assert daemon.stop() == 0


def results_for(daemon, keys):
    wanted = set(keys)

    def found():
        lines = [line for line in daemon.result_lines() if line["key"] in wanted]
        return lines if {line["key"] for line in lines} == wanted else None

    return daemon.wait_for(found, timeout=60, what=f"results for {sorted(wanted)}")


def test_snsd_confirms_the_subscription_by_itself(loop, sns):
    daemon, wiring = loop
    subscription_arn = find_subscription(sns, wiring.topic_arn, daemon.url + "/")
    assert subscription_arn.startswith(wiring.topic_arn + ":")
    attributes = sns.get_subscription_attributes(SubscriptionArn=subscription_arn)["Attributes"]
    assert attributes["PendingConfirmation"] == "false"
    assert attributes["Endpoint"] == daemon.url + "/"
    assert "confirmed subscription" in daemon.output()


@pytest.mark.parametrize("key", ["data/a b.csv", "data/a+b.csv", "data/été 2026 ü.csv"])
def test_an_upload_yields_a_result_with_the_exact_key(loop, s3, key):
    daemon, wiring = loop
    s3.put_object(Bucket=wiring.bucket, Key=key, Body=b"id,name\n1,a\n2,b\n")
    (line,) = results_for(daemon, [key])
    assert line["status"] == "ok" and line["bucket"] == wiring.bucket
    assert line["result"]["verdict"] == "passed" and line["result"]["rows"] == 2
    assert line["topic_arn"] == wiring.topic_arn and line["message_id"]


def test_rules_failures_name_the_check_and_the_rows(loop, s3):
    daemon, wiring = loop
    s3.put_object(Bucket=wiring.bucket, Key="people/bad.csv", Body=b"id,age\n1,30\n1,200\n3,-1\n")
    (line,) = results_for(daemon, ["people/bad.csv"])
    result = line["result"]
    assert line["status"] == "ok" and result["verdict"] == "failed" and result["rule_set"] == "people"
    failed = {(c["check"], c["field"]): c["rows"] for c in result["checks"] if not c["passed"]}
    assert failed[("unique", "id")] == [2]
    assert failed[("maximum", "age")] == [2]
    assert failed[("minimum", "age")] == [3]


def test_an_event_with_several_records_yields_one_result_per_record(loop, s3, sns):
    daemon, wiring = loop
    keys = [f"multi/{i} part.csv" for i in range(3)]
    records = []
    for key in keys:
        s3.put_object(Bucket=wiring.bucket, Key="side/" + key, Body=b"x\n1\n")  # its own notification too
        records.append(
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventName": "ObjectCreated:Put",
                "eventTime": "2026-11-29T10:00:00.000Z",
                "s3": {
                    "bucket": {"name": wiring.bucket},
                    "object": {"key": ("side/" + key).replace(" ", "+"), "size": 4},
                },
            }
        )
    response = sns.publish(TopicArn=wiring.topic_arn, Message=json.dumps({"Records": records}))
    message_id = response["MessageId"]

    def from_message():
        lines = [line for line in daemon.result_lines() if line["message_id"] == message_id]
        return lines if len(lines) == 3 else None

    lines = daemon.wait_for(from_message, timeout=60, what="three results of one message")
    assert sorted(line["key"] for line in lines) == sorted("side/" + k for k in keys)
    assert {(line["status"], line["result"]["verdict"]) for line in lines} == {("ok", "passed")}


def test_signatures_are_verified_against_localstacks_certificate(loop):
    daemon, wiring = loop
    assert "NOT verified" not in daemon.output()
    assert "cached signing certificate http://127.0.0.1:" in daemon.output()


@pytest.fixture(scope="session")
def signed_envelope(loop, aws_env, s3, sns):
    """A genuine LocalStack-signed Notification the daemon has not seen: published to a second
    topic whose only subscriber is an SQS queue, which receives the signed envelope as its body."""
    daemon, wiring = loop
    sqs = client("sqs", aws_env)
    topic_arn = sns.create_topic(Name=f"{wiring.bucket}-signed")["TopicArn"]
    queue_url = sqs.create_queue(QueueName=f"{wiring.bucket}-signed")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    # A bucket without notifications: only the message below mentions these objects.
    bucket = s3.create_bucket(Bucket=f"{wiring.bucket}-signed") and f"{wiring.bucket}-signed"
    for key in ("signed/genuine.csv", "signed/tampered.csv"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"id\n1\n")
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": "signed/genuine.csv"}},
    }
    message_id = sns.publish(TopicArn=topic_arn, Message=json.dumps({"Records": [record]}))["MessageId"]
    received = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=10, MaxNumberOfMessages=1)["Messages"]
    envelope = json.loads(received[0]["Body"])
    assert envelope["MessageId"] == message_id and envelope["Signature"]
    return envelope


def test_a_tampered_message_signed_by_localstack_is_refused(loop, signed_envelope):
    daemon, wiring = loop
    tampered = {**signed_envelope, "Message": signed_envelope["Message"].replace("genuine", "tampered")}
    status, body, _ = daemon.post(json.dumps(tampered).encode())
    assert (status, json.loads(body)) == (403, {"error": "bad_signature"})
    status, body, _ = daemon.post(json.dumps(signed_envelope).encode())
    assert status == 200, body
    (line,) = results_for(daemon, ["signed/genuine.csv"])
    assert line["message_id"] == signed_envelope["MessageId"] and line["result"]["verdict"] == "passed"
    assert not [line for line in daemon.result_lines() if line["key"] == "signed/tampered.csv"]


def test_a_forged_signature_with_localstacks_certificate_url_is_refused(loop, signed_envelope):
    daemon, wiring = loop
    forged = {
        **signed_envelope,
        "MessageId": str(uuid.uuid4()),
        "Signature": signed_envelope["Signature"][:-8] + "AAAAAAA=",
    }
    status, body, _ = daemon.post(json.dumps(forged).encode())
    assert (status, json.loads(body)) == (403, {"error": "bad_signature"})


def test_a_certificate_url_outside_the_trusted_hosts_is_refused(loop):
    daemon, wiring = loop
    forged = {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": wiring.topic_arn,
        "Message": json.dumps({"Records": []}),
        "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "SignatureVersion": "1",
        "Signature": "Zm9yZ2Vk",
        "SigningCertURL": "http://127.0.0.1:1/_aws/sns/SimpleNotificationService-x.pem",
    }
    status, body, _ = daemon.post(json.dumps(forged).encode())
    assert (status, json.loads(body)) == (403, {"error": "untrusted_cert_url"})


def test_missing_objects_open_the_breaker_and_reset_closes_it(tmp_path, localstack_url, aws_env, sns):
    bucket = f"e2e-breaker-{uuid.uuid4().hex[:8]}"
    daemon, wiring = start_wired_daemon(
        tmp_path,
        localstack_url,
        aws_env,
        bucket,
        "--breaker-max-failures",
        "3",
        "--breaker-cooldown",
        "300",
        "--workers",
        "1",
    )
    try:
        missing = [
            {
                "eventVersion": "2.1",
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": bucket}, "object": {"key": f"gone-{i}.csv"}},
            }
            for i in range(3)
        ]
        sns.publish(TopicArn=wiring.topic_arn, Message=json.dumps({"Records": missing}))
        lines = daemon.wait_for(
            lambda: len(daemon.result_lines()) >= 3 and daemon.result_lines(), timeout=60, what="three failed jobs"
        )
        assert {(line["status"], line["error_kind"]) for line in lines} == {("error", "s3_not_found")}

        def breaker():
            status, body, _ = daemon.admin("GET", "/breaker")
            state = json.loads(body)
            return state if state["state"] == "open" else None

        state = daemon.wait_for(breaker, timeout=10, what="the breaker to open")
        assert state["active"] is True and state["consecutive_failures"] == 3 and state["cooldown_remaining"] > 0
        status, body, _ = daemon.admin("POST", "/breaker/reset")
        assert status == 200 and json.loads(body)["state"] == "closed"
        assert json.loads(daemon.admin("GET", "/breaker")[1])["state"] == "closed"
    finally:
        assert daemon.stop() == 0


def test_the_one_command_run_wires_confirms_and_stops_on_sigterm(tmp_path, localstack_url, aws_env, s3):
    """`make run`'s program against this session's LocalStack (reused, so it must stay up afterwards)."""
    bucket = f"e2e-run-{uuid.uuid4().hex[:8]}"
    port = free_port()
    results = tmp_path / "results.jsonl"
    log = tmp_path / "run.out"
    command = [sys.executable, "-m", "snsd_devtools.run", "--port", str(port), "--bucket", bucket]
    command += ["--topic", f"{bucket}-topic", "--results", str(results), "--spool", str(tmp_path / "spool.sqlite3")]
    with open(log, "wb") as out:
        run = subprocess.Popen(command, env={**os.environ, **aws_env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        poll_until(
            lambda: b"Upload a file" in log.read_bytes() or run.poll() is not None, 60, "the banner", log.read_text
        )
        assert run.poll() is None, log.read_text()
        assert f"snsd is running at http://127.0.0.1:{port}" in log.read_text()
        assert "(confirmed by snsd)" in log.read_text()
        s3.put_object(Bucket=bucket, Key="in/a b.csv", Body=b"id\n1\n")
        poll_until(lambda: results.exists() and results.read_text().strip(), 30, "the result line", log.read_text)
        (line,) = [json.loads(text) for text in results.read_text().splitlines()]
        assert (line["bucket"], line["key"], line["status"]) == (bucket, "in/a b.csv", "ok")
    finally:
        run.send_signal(signal.SIGTERM)
        code = run.wait(60)
    assert code == 0, log.read_text()
    assert "Server Shut Down." in log.read_text()
    assert is_healthy(localstack_url)  # it reused LocalStack, so it left it running
