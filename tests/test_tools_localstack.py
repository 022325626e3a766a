"""The LocalStack tools against a real LocalStack: health, idempotent wiring, publishing.

LocalStack comes from ``tests.localstack_fixtures`` (``$LOCALSTACK_URL`` if healthy, else started
on a free port).  Every test makes its own bucket/topic names, so a shared LocalStack is fine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest

from snsd.records import parse_s3_message
from snsd.tools.wire import clients, find_subscription, is_confirmed, topic_policy, wire
from snsd_devtools import localstack as ls
from tests import localstack_fixtures

pytestmark = pytest.mark.localstack

localstack_url = localstack_fixtures.localstack_url
aws_env = localstack_fixtures.aws_env


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def run_tool(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


class ConfirmingListener:
    """A minimal subscriber on loopback: confirms subscriptions by GETting SubscribeURL and answers
    /readyz, as snsd does (tests/test_tools_run.py uses it as an snsd left running on a port)."""

    def __init__(self):
        self.received: list[dict] = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if self.path == "/readyz" else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                listener.received.append(body)
                if body.get("Type") == "SubscriptionConfirmation":
                    urllib.request.urlopen(body["SubscribeURL"], timeout=10).read()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_ensure_localstack_yields_a_healthy_endpoint_with_our_services(localstack_url):
    document = ls.health(localstack_url)
    assert document is not None
    for service in ("sns", "s3", "sqs"):
        assert document["services"][service] in ("available", "running")


def test_ensure_localstack_reuses_a_healthy_url_without_starting_another(localstack_url):
    with ls.ensure_localstack(url=localstack_url) as url:
        assert url == localstack_url.rstrip("/")


def test_wiring_twice_changes_nothing(localstack_url, aws_env):
    bucket, topic = unique("bucket"), unique("topic")
    listener = f"http://127.0.0.1:{ls.free_port()}/"  # nobody there: the subscription stays pending

    first = wire(localstack_url, listener, bucket, topic)
    s3, sns = clients(localstack_url)
    notification_after_first = s3.get_bucket_notification_configuration(Bucket=bucket)["TopicConfigurations"]
    second = wire(localstack_url, listener, bucket, topic)

    assert (second.topic_arn, second.subscription_arn, second.bucket) == (
        first.topic_arn,
        first.subscription_arn,
        first.bucket,
    )
    subscriptions = sns.list_subscriptions_by_topic(TopicArn=first.topic_arn)["Subscriptions"]
    assert [(s["Protocol"], s["Endpoint"]) for s in subscriptions] == [("http", listener)]
    assert s3.get_bucket_notification_configuration(Bucket=bucket)["TopicConfigurations"] == notification_after_first
    assert [(c["TopicArn"], c["Events"]) for c in notification_after_first] == [
        (first.topic_arn, ["s3:ObjectCreated:*"])
    ]
    policy = json.loads(sns.get_topic_attributes(TopicArn=first.topic_arn)["Attributes"]["Policy"])
    assert policy == topic_policy(first.topic_arn, bucket)
    assert any(a.startswith("created bucket") for a in first.actions)
    assert not any(a.startswith(("created", "set ", "subscribed")) for a in second.actions), second.actions


def test_wire_cli_prints_what_it_did(localstack_url, aws_env):
    bucket, topic = unique("bucket"), unique("topic")
    listener = f"http://127.0.0.1:{ls.free_port()}/"
    args = ("--endpoint-url", localstack_url, "--listener-url", listener, "--bucket", bucket, "--topic", topic)
    result = run_tool("snsd.tools.wire", *args, env=aws_env)
    assert result.returncode == 0, result.stderr
    assert f"created bucket {bucket}" in result.stdout
    assert f"topic_arn=arn:aws:sns:us-east-1:000000000000:{topic}" in result.stdout


def test_wire_waits_until_the_listener_confirmed(localstack_url):
    bucket, topic = unique("bucket"), unique("topic")
    with ConfirmingListener() as listener:
        wiring = wire(localstack_url, listener.url, bucket, topic, wait_confirmed_seconds=30)
        _, sns = clients(localstack_url)
        assert wiring.confirmed and is_confirmed(sns, wiring.subscription_arn)
        assert find_subscription(sns, wiring.topic_arn, listener.url) == wiring.subscription_arn
        assert [m["Type"] for m in listener.received] == ["SubscriptionConfirmation"]


def test_wait_confirmed_times_out_when_nobody_confirms(localstack_url, aws_env):
    listener = f"http://127.0.0.1:{ls.free_port()}/"
    args = ("--endpoint-url", localstack_url, "--listener-url", listener, "--topic", unique("topic"))
    result = run_tool("snsd.tools.wire", *args, "--bucket", unique("bucket"), "--wait-confirmed", "1", env=aws_env)
    assert result.returncode == 1
    assert "not confirmed after 1s" in result.stderr


def test_publish_delivers_the_event_to_the_topic(localstack_url, aws_env):
    session = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
    sns = session.client("sns", endpoint_url=localstack_url)
    sqs = session.client("sqs", endpoint_url=localstack_url)
    topic_arn = sns.create_topic(Name=unique("topic"))["TopicArn"]
    queue_url = sqs.create_queue(QueueName=unique("queue"))["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    key = "uploads/2026/11/a b+c é.csv"

    result = run_tool(
        "snsd.tools.publish",
        "--endpoint-url",
        localstack_url,
        "--topic-arn",
        topic_arn,
        "--bucket",
        "incoming",
        "--key",
        key,
        env=aws_env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    status_line = [line for line in result.stdout.splitlines() if line.startswith("HTTP ")][-1]
    assert status_line.startswith("HTTP 200 MessageId=")
    message_id = status_line.split("MessageId=")[1].split()[0]

    received = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=10, MaxNumberOfMessages=1)["Messages"]
    envelope = json.loads(received[0]["Body"])
    assert envelope["MessageId"] == message_id
    assert envelope["TopicArn"] == topic_arn
    records = parse_s3_message(envelope["Message"]).records
    assert [(r.bucket, r.key) for r in records] == [("incoming", key)]


def test_publish_reports_a_missing_topic_with_the_error(localstack_url, aws_env):
    result = run_tool("snsd.tools.publish", "--endpoint-url", localstack_url, "--topic", unique("absent"), env=aws_env)
    assert result.returncode == 1
    assert "HTTP 404" in result.stdout and "NotFound" in result.stdout


def test_run_sets_the_aws_environment_and_passes_the_exit_code(localstack_url):
    script = "import os, sys; print(os.environ['AWS_ENDPOINT_URL'], os.environ['AWS_ACCESS_KEY_ID']); sys.exit(7)"
    command = ["run", "--url", localstack_url, "--", sys.executable, "-c", script]
    result = subprocess.run(
        [sys.executable, "-m", "snsd_devtools.localstack", *command], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 7
    assert result.stdout.split() == [localstack_url, "test"]


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (Linux /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.rpartition(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                    found.add(address)
    return found


def test_a_localstack_we_start_listens_on_loopback_only_and_is_stopped_afterwards():
    port = ls.free_port()
    with ls.ensure_localstack(port=port) as url:
        assert url == f"http://127.0.0.1:{port}"
        assert ls.is_healthy(url, ls.SERVICES)
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0
    assert ls.health(url, timeout=1.0) is None
    assert listening_addresses(port) == set()


def test_a_taken_port_fails_at_once_with_a_clear_error():
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(ls.LocalStackError, match=f"port {port} is taken"):
            with ls.ensure_localstack(port=port, timeout=5):
                pass


def test_up_runs_until_sigterm_and_then_stops_localstack():
    port = ls.free_port()
    up = subprocess.Popen(
        [sys.executable, "-m", "snsd_devtools.localstack", "up", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        ready = up.stdout.readline()  # blocks until the CLI says LocalStack is healthy
        assert ready.startswith(f"LocalStack ready at http://127.0.0.1:{port}")
        assert ls.is_healthy(f"http://127.0.0.1:{port}")
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0
    finally:
        if up.poll() is None:
            up.kill()
    assert listening_addresses(port) == set()
