"""--role listener / --role worker against a real LocalStack SQS (issue 16's scenarios).

Every process is a real ``twistd -n snsd``; uploads are real S3 puts, delivered by LocalStack's
S3 -> SNS (signed) -> listener, or S3 -> SQS, or S3 -> SNS -> SQS.  Each test makes its own
queues (``snsd-wire --queue``'s code) so none sees another's messages.

The scenarios run at the issue's full size: 500 uploads, a 60 s SQS outage.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import boto3
import pytest
from prometheus_client.parser import text_string_to_metric_families

from snsd.records import S3ObjectRecord
from snsd.sqs.codec import encode_record
from snsd.tools.wire import wire, wire_sqs
from tests.process_helpers import Daemon
from tests.tcp_proxy import CuttableProxy

pytestmark = pytest.mark.localstack

UPLOADS = 500
OUTAGE = 60.0
VISIBILITY = 6


def trusted(localstack_url):
    return f"127.0.0.1:{urlsplit(localstack_url).port}"


def client(service, aws_env, endpoint=None):
    return boto3.client(
        service,
        endpoint_url=endpoint or aws_env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def start(workdir, role, queue_url, aws_env, *args, env=None):
    daemon = Daemon(workdir, "--role", role, "--queue", queue_url, *args, env={**aws_env, **(env or {})})
    return daemon.start(timeout=60)


def worker(workdir, queue_url, aws_env, results_bucket, *args, env=None):
    """A worker writing results to S3 (so several workers' results are counted in one place)."""
    daemon = Daemon(workdir, "--role", "worker", "--queue", queue_url, *args, env={**aws_env, **(env or {})})
    at = daemon.args.index("--dry-run")
    del daemon.args[at : at + 3]  # --dry-run --results PATH: S3 instead
    daemon.args += ["--results-bucket", results_bucket, "--results-prefix", "results/"]
    return daemon.start(timeout=60)


def stop_all(*daemons) -> None:
    """SIGTERM to all, then wait for each: a worker's drain may wait out its long poll (up to 20 s)."""
    for d in daemons:
        if d.process.poll() is None:
            d.signal(signal.SIGTERM)
    for d in daemons:
        assert d.wait() == 0, d.output()[-3000:]


def result_keys(s3, bucket) -> set[str]:
    keys = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="results/"):
        keys.update(o["Key"] for o in page.get("Contents", []))
    return keys


def wait_until(predicate, timeout, what, *daemons):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    logs = "\n".join(d.output()[-3000:] for d in daemons)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def metric(daemon, sample: str, **labels: str) -> float:
    """The sum of ``sample``'s values on the daemon's /metrics whose labels include ``labels``."""
    status, body, _ = daemon.admin("GET", "/metrics")
    assert status == 200
    return sum(
        s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name == sample and labels.items() <= s.labels.items()
    )


def queue_depth(sqs, url) -> int:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


@pytest.fixture
def s3(aws_env):
    return client("s3", aws_env)


@pytest.fixture
def sqs(aws_env):
    return client("sqs", aws_env)


def put_all(s3, bucket, keys, workers=8):
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=b"id\n1\n"), keys))


def test_one_listener_two_workers_every_upload_gives_exactly_one_result_document(tmp_path, localstack_url, aws_env, s3):
    bucket, results = name("scale"), name("results")
    s3.create_bucket(Bucket=results)
    queues = wire_sqs(localstack_url, name("records"), visibility_timeout=VISIBILITY)
    listener = start(
        tmp_path / "listener", "listener", queues.queue_url, aws_env, "--trusted-host", trusted(localstack_url)
    )
    workers = [
        worker(tmp_path / f"w{n}", queues.queue_url, aws_env, results, "--job", "snsd_test_jobs:echo", "--workers", "4")
        for n in range(2)
    ]
    try:
        wire(localstack_url, listener.url + "/", bucket=bucket, topic=f"{bucket}-topic", wait_confirmed_seconds=30)
        keys = [f"in/{n:04d}.csv" for n in range(UPLOADS)]
        put_all(s3, bucket, keys)
        wanted = {f"results/{bucket}/{k}" for k in keys}

        def sources():  # results/<bucket>/<key>/<etag>.dq.json -> results/<bucket>/<key>
            return {k.rsplit("/", 1)[0] for k in result_keys(s3, results)}

        wait_until(lambda: sources() == wanted, 180, f"{UPLOADS} results", listener, *workers)
        assert len(result_keys(s3, results)) == UPLOADS  # one document per upload, redeliveries or not
        forwarded = metric(listener, "snsd_forwarded_total")
        assert forwarded == UPLOADS
        done = [metric(w, "snsd_sqs_deleted_total", why="done") for w in workers]
        assert sum(done) >= UPLOADS and all(n > 0 for n in done), done  # both workers took a share
    finally:
        stop_all(listener, *workers)


def test_a_killed_workers_messages_come_back_and_the_other_worker_finishes_them(tmp_path, localstack_url, aws_env, sqs):
    queues = wire_sqs(localstack_url, name("kill"), visibility_timeout=VISIBILITY)
    keys = [f"k{n}.csv" for n in range(6)]
    for key in keys:  # what a listener would have forwarded (and acknowledged to SNS)
        sqs.send_message(QueueUrl=queues.queue_url, MessageBody=encode_record(S3ObjectRecord("b", key)))
    slow = {"SNSD_TEST_JOB_SECONDS": "30"}
    first = start(
        tmp_path / "first",
        "worker",
        queues.queue_url,
        aws_env,
        "--job",
        "snsd_test_jobs:slow",
        "--workers",
        "3",
        "--visibility-timeout",
        str(VISIBILITY),
        env=slow,
    )
    wait_until(lambda: metric(first, "snsd_jobs_running") == 3, 60, "three jobs running", first)
    time.sleep(VISIBILITY)  # the heartbeat has extended their visibility at least once
    assert metric(first, "snsd_sqs_visibility_extensions_total") >= 3
    first.process.send_signal(signal.SIGKILL)
    first.wait()
    second = start(
        tmp_path / "second",
        "worker",
        queues.queue_url,
        aws_env,
        "--job",
        "snsd_test_jobs:echo",
        "--visibility-timeout",
        str(VISIBILITY),
    )
    try:
        wait_until(lambda: {line["key"] for line in second.result_lines()} == set(keys), 90, "all six results", second)
        wait_until(lambda: queue_depth(sqs, queues.queue_url) == 0, 30, "an empty queue", second)
        assert metric(second, "snsd_sqs_redelivered_total") >= 3  # the killed worker's three came back
    finally:
        assert second.stop() == 0


def test_an_sqs_outage_is_answered_200_and_everything_is_forwarded_once_it_is_back(
    tmp_path, localstack_url, aws_env, s3
):
    bucket = name("outage")
    queues = wire_sqs(localstack_url, name("outage"), visibility_timeout=VISIBILITY)
    proxy = CuttableProxy(urlsplit(localstack_url).port)  # the listener reaches SQS through it only
    listener = start(
        tmp_path / "listener",
        "listener",
        queues.queue_url,
        {**aws_env, "AWS_ENDPOINT_URL": proxy.url},
        "--trusted-host",
        trusted(localstack_url),
    )
    work = start(tmp_path / "worker", "worker", queues.queue_url, aws_env, "--job", "snsd_test_jobs:echo")
    try:
        wire(localstack_url, listener.url + "/", bucket=bucket, topic=f"{bucket}-topic", wait_confirmed_seconds=30)
        before = [f"before/{n}.csv" for n in range(5)]
        put_all(s3, bucket, before)
        wait_until(lambda: len(work.result_lines()) == 5, 60, "results before the outage", listener, work)
        proxy.cut()
        during = []
        outage_ends = time.monotonic() + OUTAGE
        n = 0
        while time.monotonic() < outage_ends:
            key = f"during/{n}.csv"
            s3.put_object(Bucket=bucket, Key=key, Body=b"id\n1\n")
            during.append(key)
            n += 1
            time.sleep(0.5)
        wait_until(
            lambda: metric(listener, "snsd_requests_total", status="200", type="Notification") >= 5 + len(during),
            30,
            "the listener to answer every notification",
            listener,
        )
        assert metric(listener, "snsd_outbox_pending") > 0  # held locally while SQS is unreachable
        assert metric(listener, "snsd_forward_failures_total") > 0
        proxy.restore()
        wanted = set(before + during)
        wait_until(
            lambda: {line["key"] for line in work.result_lines()} == wanted, 90, "every record after", listener, work
        )
        answered = metric(listener, "snsd_requests_total")
        assert answered == metric(listener, "snsd_requests_total", status="200")  # no 5xx at all
        wait_until(lambda: metric(listener, "snsd_outbox_pending") == 0, 30, "an empty outbox", listener)
    finally:
        proxy.close()
        stop_all(listener, work)


def test_a_record_that_always_fails_is_dead_lettered_and_replay_brings_it_back(tmp_path, localstack_url, aws_env, sqs):
    queues = wire_sqs(localstack_url, name("poison"), max_receive_count=2, visibility_timeout=VISIBILITY)
    sqs.send_message(QueueUrl=queues.queue_url, MessageBody=encode_record(S3ObjectRecord("b", "poison.csv")))
    failing = start(
        tmp_path / "failing",
        "worker",
        queues.queue_url,
        aws_env,
        "--job",
        "snsd_test_jobs:missing",
        "--breaker-max-failures",
        "100",
    )
    try:
        wait_until(lambda: queue_depth(sqs, queues.dead_letter_url) == 1, 90, "a dead letter", failing)
    finally:
        assert failing.stop() == 0
    assert failing.result_lines() == []
    admin = [sys.executable, "-m", "snsd.admin", "--queue", queues.queue_url, "dead-letters"]
    listed = subprocess.run([*admin, "list"], env=aws_env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "s3://b/poison.csv" in listed.stdout and "1 dead letter" in listed.stdout
    exported = subprocess.run([*admin, "export"], env=aws_env, capture_output=True, text=True, timeout=60)
    assert exported.returncode == 0, exported.stderr
    (letter,) = [json.loads(line) for line in exported.stdout.splitlines()]
    assert letter["objects"] == ["s3://b/poison.csv"] and letter["receive_count"] >= 2
    assert json.loads(letter["body"])["record"]["key"] == "poison.csv"
    replayed = subprocess.run([*admin, "replay"], env=aws_env, capture_output=True, text=True, timeout=60)
    assert replayed.returncode == 0, replayed.stderr
    assert re.search(r"replayed 1: 1 sent back", replayed.stdout), replayed.stdout
    assert queue_depth(sqs, queues.dead_letter_url) == 0
    fixed = start(tmp_path / "fixed", "worker", queues.queue_url, aws_env, "--job", "snsd_test_jobs:echo")
    try:
        (line,) = wait_until(fixed.result_lines, 60, "the replayed record's result", fixed)
        assert line["key"] == "poison.csv" and line["status"] == "ok"
    finally:
        assert fixed.stop() == 0


def test_an_sns_to_sqs_subscription_feeds_a_worker(tmp_path, localstack_url, aws_env, s3):
    bucket = name("viasns")
    queues = wire_sqs(localstack_url, name("viasns"), feed="sns", bucket=bucket, topic=f"{bucket}-topic")
    work = start(
        tmp_path / "worker",
        "worker",
        queues.queue_url,
        aws_env,
        "--job",
        "snsd_test_jobs:echo",
        "--trusted-host",
        trusted(localstack_url),
    )
    try:
        s3.put_object(Bucket=bucket, Key="via sns/a.csv", Body=b"id\n1\n")
        (line,) = wait_until(work.result_lines, 60, "the result", work)
        assert line["key"] == "via sns/a.csv" and line["topic_arn"].endswith(f"{bucket}-topic")
    finally:
        assert work.stop() == 0


def test_an_s3_to_sqs_notification_feeds_a_worker_and_its_test_event_is_dropped(
    tmp_path, localstack_url, aws_env, s3, sqs
):
    bucket = name("vias3")
    queues = wire_sqs(localstack_url, name("vias3"), feed="s3", bucket=bucket)
    sqs.send_message(
        QueueUrl=queues.queue_url,
        MessageBody=json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": bucket}),
    )
    work = start(tmp_path / "worker", "worker", queues.queue_url, aws_env, "--job", "snsd_test_jobs:echo")
    try:
        s3.put_object(Bucket=bucket, Key="via s3/a.csv", Body=b"id\n1\n")
        (line,) = wait_until(work.result_lines, 60, "the result", work)
        assert line["key"] == "via s3/a.csv" and line["topic_arn"] is None
        wait_until(
            lambda: metric(work, "snsd_sqs_discarded_total", reason="s3_test_event") >= 1, 30, "the test event", work
        )
        assert "s3:TestEvent" in work.output()
    finally:
        assert work.stop() == 0


def test_wiring_the_queues_twice_changes_nothing_the_second_time(localstack_url, sqs):
    queue = name("twice")
    first = wire_sqs(localstack_url, queue, max_receive_count=3, visibility_timeout=30)
    again = wire_sqs(localstack_url, queue, max_receive_count=3, visibility_timeout=30)
    assert (again.queue_url, again.dead_letter_url) == (first.queue_url, first.dead_letter_url)
    assert any(a.startswith("created queue") for a in first.actions)
    assert all("unchanged" in a for a in again.actions), again.actions
    attributes = sqs.get_queue_attributes(QueueUrl=first.queue_url, AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == first.dead_letter_arn and int(redrive["maxReceiveCount"]) == 3
    changed = wire_sqs(localstack_url, queue, max_receive_count=4, visibility_timeout=30)
    assert any("set RedrivePolicy" in a for a in changed.actions), changed.actions


def test_snsd_wire_queue_alone_makes_the_queues_and_subscribes_nothing(localstack_url, aws_env, capsys):
    from snsd.tools.wire import main

    queue, topic = name("cli"), name("cli-topic")
    assert main(["--endpoint-url", localstack_url, "--queue", queue, "--topic", topic]) == 0
    out = capsys.readouterr().out
    assert "queue_url=" in out and f"/{queue}\n" in out and "dead_letter_url=" in out
    sns = client("sns", aws_env)
    topics = [t["TopicArn"] for page in sns.get_paginator("list_topics").paginate() for t in page["Topics"]]
    assert not any(arn.endswith(f":{topic}") for arn in topics)  # no listener wired without --listener-url


def test_sigterm_makes_a_workers_unfinished_messages_visible_again_at_once(tmp_path, localstack_url, aws_env, sqs):
    queues = wire_sqs(localstack_url, name("term"), visibility_timeout=120)
    for n in range(3):
        sqs.send_message(QueueUrl=queues.queue_url, MessageBody=encode_record(S3ObjectRecord("b", f"t{n}.csv")))
    work = start(
        tmp_path / "worker", "worker", queues.queue_url, aws_env, "--job", "snsd_test_jobs:slow", "--workers", "3",
        "--visibility-timeout", "120", "--drain-timeout", "1", env={"SNSD_TEST_JOB_SECONDS": "60"},
    )  # fmt: skip
    wait_until(lambda: metric(work, "snsd_jobs_running") == 3, 60, "three jobs running", work)
    stopped = time.monotonic()
    assert work.stop() == 0
    visible = wait_until(
        lambda: (
            int(
                sqs.get_queue_attributes(QueueUrl=queues.queue_url, AttributeNames=["ApproximateNumberOfMessages"])[
                    "Attributes"
                ]["ApproximateNumberOfMessages"]
            )
            == 3
        ),
        30,
        "the three messages visible again",
        work,
    )
    assert visible and time.monotonic() - stopped < 60  # not after the 120 s visibility timeout
    assert "making 3 unfinished messages visible again" in work.output()
