"""Wire S3 -> SNS -> snsd, idempotently.

Creates (or finds) the bucket, the topic, the topic policy that lets S3 publish, the bucket's
``s3:ObjectCreated:*`` notification to the topic, and the HTTP(S) subscription to snsd's URL.
snsd confirms the subscription itself; ``--wait-confirmed`` waits until it has.  Running it
again changes nothing: every step compares what exists with what it wants first.

    snsd-wire --endpoint-url http://127.0.0.1:4566 --listener-url http://127.0.0.1:8080/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from snsd.tools import wire_queue

DEFAULT_BUCKET = "incoming"
DEFAULT_TOPIC = "snsd-uploads"
DEFAULT_REGION = "us-east-1"
DEFAULT_LISTENER = "http://127.0.0.1:8080/"
PENDING = "PendingConfirmation"

_CONFIG = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"})


@dataclass(frozen=True)
class Wiring:
    topic_arn: str
    subscription_arn: str
    bucket: str
    # Human-readable account of each step ("created ...", "... unchanged"), for the CLI.
    actions: tuple[str, ...] = ()

    @property
    def confirmed(self) -> bool:
        return self.subscription_arn.startswith("arn:") and self.subscription_arn != PENDING


def _session(region: str) -> boto3.session.Session:
    session = boto3.session.Session(region_name=region)
    if session.get_credentials() is None:
        # LocalStack accepts any credentials; real AWS will have its own in the environment.
        session = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name=region)
    return session


def clients(endpoint_url: str | None, region: str = DEFAULT_REGION):
    """(s3, sns) clients for ``endpoint_url`` (None: boto3's own endpoint resolution)."""
    session = _session(region)
    s3 = session.client("s3", endpoint_url=endpoint_url, config=_CONFIG)
    sns = session.client("sns", endpoint_url=endpoint_url, config=_CONFIG)
    return s3, sns


def topic_policy(topic_arn: str, bucket: str) -> dict:
    return {
        "Version": "2012-10-17",
        "Id": "snsd-s3-publish",
        "Statement": [
            {
                "Sid": "AllowS3BucketToPublish",
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "SNS:Publish",
                "Resource": topic_arn,
                "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}},
            }
        ],
    }


def _notification_id(topic: str) -> str:
    return f"snsd-{topic}"


def _ensure_bucket(s3, bucket: str, region: str, actions: list[str]) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
        actions.append(f"bucket {bucket} exists")
        return
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
    kwargs = {"Bucket": bucket}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**kwargs)
        actions.append(f"created bucket {bucket}")
    except ClientError as exc:
        # Someone else created it between our check and now: that is the state we wanted.
        if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
            raise
        actions.append(f"bucket {bucket} exists")


def _ensure_topic(sns, topic: str, actions: list[str]) -> str:
    existing = {t["TopicArn"] for page in sns.get_paginator("list_topics").paginate() for t in page.get("Topics", [])}
    topic_arn = sns.create_topic(Name=topic)["TopicArn"]  # idempotent, returns the existing ARN
    actions.append(f"topic {topic_arn} exists" if topic_arn in existing else f"created topic {topic_arn}")
    return topic_arn


def _ensure_policy(sns, topic_arn: str, bucket: str, actions: list[str]) -> None:
    wanted = topic_policy(topic_arn, bucket)
    current = sns.get_topic_attributes(TopicArn=topic_arn)["Attributes"].get("Policy")
    if current and json.loads(current) == wanted:
        actions.append("topic policy unchanged")
        return
    sns.set_topic_attributes(TopicArn=topic_arn, AttributeName="Policy", AttributeValue=json.dumps(wanted))
    actions.append("set topic policy allowing s3.amazonaws.com to SNS:Publish from " + f"arn:aws:s3:::{bucket}")


def _ensure_notification(s3, bucket: str, topic: str, topic_arn: str, actions: list[str]) -> None:
    current = s3.get_bucket_notification_configuration(Bucket=bucket)
    current.pop("ResponseMetadata", None)
    ours = {"Id": _notification_id(topic), "TopicArn": topic_arn, "Events": ["s3:ObjectCreated:*"]}
    topics = current.get("TopicConfigurations", [])
    if any(_same_topic_config(c, ours) for c in topics):
        actions.append("bucket notification unchanged")
        return
    # Keep whatever else the bucket notifies; replace only our own entry.
    others = [c for c in topics if c.get("Id") != ours["Id"] and c.get("TopicArn") != topic_arn]
    config = {k: v for k, v in current.items() if k in ("QueueConfigurations", "LambdaFunctionConfigurations")}
    if "EventBridgeConfiguration" in current:
        config["EventBridgeConfiguration"] = current["EventBridgeConfiguration"]
    config["TopicConfigurations"] = [*others, ours]
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=config)
    actions.append(f"set bucket notification s3:ObjectCreated:* -> {topic_arn}")


def _same_topic_config(config: dict, ours: dict) -> bool:
    return (
        config.get("TopicArn") == ours["TopicArn"]
        and sorted(config.get("Events", [])) == ours["Events"]
        and not config.get("Filter")
    )


def find_subscription(sns, topic_arn: str, listener_url: str) -> str | None:
    """The ARN (or ``PendingConfirmation``) of ``listener_url``'s subscription to the topic."""
    protocol = urlsplit(listener_url).scheme
    paginator = sns.get_paginator("list_subscriptions_by_topic")
    for page in paginator.paginate(TopicArn=topic_arn):
        for sub in page.get("Subscriptions", []):
            if sub.get("Protocol") == protocol and sub.get("Endpoint") == listener_url:
                return sub["SubscriptionArn"]
    return None


def _ensure_subscription(sns, topic_arn: str, listener_url: str, actions: list[str]) -> str:
    protocol = urlsplit(listener_url).scheme
    if protocol not in ("http", "https"):
        raise ValueError(f"listener URL must be http or https: {listener_url}")
    existing = find_subscription(sns, topic_arn, listener_url)
    if existing is not None and is_confirmed(sns, existing):
        actions.append(f"subscription for {listener_url} exists, confirmed: {existing}")
        return existing
    if existing is not None:
        # Subscribing again returns the same subscription; AWS also resends the confirmation
        # (useful when snsd was down the first time), LocalStack does not.
        sns.subscribe(TopicArn=topic_arn, Protocol=protocol, Endpoint=listener_url, ReturnSubscriptionArn=True)
        actions.append(f"subscription for {listener_url} exists, pending confirmation: {existing}")
        return existing
    # ReturnSubscriptionArn gives the real ARN even while confirmation is pending.
    arn = sns.subscribe(TopicArn=topic_arn, Protocol=protocol, Endpoint=listener_url, ReturnSubscriptionArn=True)[
        "SubscriptionArn"
    ]
    actions.append(f"subscribed {listener_url}: {arn}")
    return arn


def is_confirmed(sns, subscription_arn: str) -> bool:
    if not subscription_arn.startswith("arn:"):
        return False
    try:
        attributes = sns.get_subscription_attributes(SubscriptionArn=subscription_arn)["Attributes"]
    except ClientError:
        return False
    return attributes.get("PendingConfirmation", "false") == "false"


def wait_confirmed(
    sns,
    topic_arn: str,
    listener_url: str,
    timeout: float,
    interval: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Poll until the subscription is confirmed; return its ARN or raise ``TimeoutError``."""
    deadline = clock() + timeout
    while True:
        arn = find_subscription(sns, topic_arn, listener_url)
        if arn is not None and is_confirmed(sns, arn):
            return arn
        if clock() >= deadline:
            raise TimeoutError(f"subscription of {listener_url} to {topic_arn} not confirmed after {timeout:g}s")
        sleep(interval)


def wire(
    endpoint_url: str | None,
    listener_url: str,
    bucket: str = DEFAULT_BUCKET,
    topic: str = DEFAULT_TOPIC,
    region: str = DEFAULT_REGION,
    wait_confirmed_seconds: float | None = None,
) -> Wiring:
    """Make bucket -> topic -> ``listener_url`` exist exactly once; return what is wired."""
    s3, sns = clients(endpoint_url, region)
    actions: list[str] = []
    _ensure_bucket(s3, bucket, region, actions)
    topic_arn = _ensure_topic(sns, topic, actions)
    _ensure_policy(sns, topic_arn, bucket, actions)
    _ensure_notification(s3, bucket, topic, topic_arn, actions)
    subscription_arn = _ensure_subscription(sns, topic_arn, listener_url, actions)
    if wait_confirmed_seconds is not None:
        subscription_arn = wait_confirmed(sns, topic_arn, listener_url, wait_confirmed_seconds)
        actions.append(f"subscription confirmed: {subscription_arn}")
    return Wiring(topic_arn=topic_arn, subscription_arn=subscription_arn, bucket=bucket, actions=tuple(actions))


def wire_sqs(
    endpoint_url: str | None,
    queue: str,
    feed: str = "listener",
    bucket: str = DEFAULT_BUCKET,
    topic: str = DEFAULT_TOPIC,
    region: str = DEFAULT_REGION,
    max_receive_count: int = wire_queue.DEFAULT_MAX_RECEIVES,
    visibility_timeout: int = wire_queue.DEFAULT_VISIBILITY,
) -> wire_queue.QueueWiring:
    """The queue and its dead letters; with ``feed`` sns or s3 also bucket -> (topic ->) queue.
    ``feed`` listener: listeners forward to the queue (wire them with :func:`wire` as usual)."""
    s3, sns = clients(endpoint_url, region)
    sqs = _session(region).client("sqs", endpoint_url=endpoint_url, config=_CONFIG)
    actions: list[str] = []
    wiring = wire_queue.ensure_queues(sqs, queue, max_receive_count, visibility_timeout, actions)
    if feed in ("sns", "s3"):
        _ensure_bucket(s3, bucket, region, actions)
    if feed == "sns":
        topic_arn = _ensure_topic(sns, topic, actions)
        _ensure_policy(sns, topic_arn, bucket, actions)
        _ensure_notification(s3, bucket, topic, topic_arn, actions)
        wire_queue.subscribe_queue(sns, sqs, topic_arn, wiring, actions)
    elif feed == "s3":
        wire_queue.notify_queue(s3, sqs, bucket, wiring, actions)
    return wire_queue.QueueWiring(
        wiring.queue_url, wiring.queue_arn, wiring.dead_letter_url, wiring.dead_letter_arn, tuple(actions)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="snsd-wire", description=__doc__.split("\n\n")[0])
    default_endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("LOCALSTACK_URL") or "http://127.0.0.1:4566"
    parser.add_argument("--endpoint-url", default=default_endpoint, help="AWS/LocalStack URL (default %(default)s)")
    parser.add_argument(
        "--listener-url",
        "--endpoint",
        dest="listener_url",
        default=None,
        help=f"snsd's URL to subscribe (default {DEFAULT_LISTENER}; with --queue, none unless given)",
    )
    parser.add_argument("--bucket", default=DEFAULT_BUCKET)
    parser.add_argument("--topic", default=DEFAULT_TOPIC)
    parser.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION)
    parser.add_argument(
        "--wait-confirmed", type=float, default=None, metavar="SECONDS", help="wait until snsd confirmed it"
    )
    parser.add_argument("--queue", help="SQS queue name: create it, its dead-letter queue and redrive policy")
    parser.add_argument(
        "--feed",
        choices=("listener", "sns", "s3"),
        default="listener",
        help="with --queue: who fills the queue (listener: snsd listeners; sns: S3 -> SNS -> SQS; s3: S3 -> SQS)",
    )
    parser.add_argument("--max-receive-count", type=int, default=wire_queue.DEFAULT_MAX_RECEIVES)
    parser.add_argument("--visibility-timeout", type=int, default=wire_queue.DEFAULT_VISIBILITY)
    args = parser.parse_args(argv)
    if args.queue:
        try:
            queues = wire_sqs(
                args.endpoint_url,
                args.queue,
                args.feed,
                args.bucket,
                args.topic,
                args.region,
                args.max_receive_count,
                args.visibility_timeout,
            )
        except (BotoCoreError, ClientError, ValueError) as exc:
            print(f"snsd-wire: {exc}", file=sys.stderr)
            return 1
        for action in queues.actions:
            print(action)
        print(f"queue_url={queues.queue_url}")
        print(f"dead_letter_url={queues.dead_letter_url}")
        if args.feed != "listener" or args.listener_url is None:
            return 0  # the queues alone: listeners are wired when they run (--listener-url)
    args.listener_url = args.listener_url or DEFAULT_LISTENER
    try:
        wiring = wire(args.endpoint_url, args.listener_url, args.bucket, args.topic, args.region, args.wait_confirmed)
    except TimeoutError as exc:
        print(f"snsd-wire: {exc}", file=sys.stderr)
        return 1
    except (BotoCoreError, ClientError, ValueError) as exc:
        print(f"snsd-wire: {exc}", file=sys.stderr)
        return 1
    for action in wiring.actions:
        print(action)
    print(f"topic_arn={wiring.topic_arn}")
    print(f"subscription_arn={wiring.subscription_arn}")
    print(f"bucket={wiring.bucket}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
