"""Wire the SQS side of snsd, idempotently: the queue, its dead-letter queue and redrive policy,
and what feeds the queue when there is no listener (an SNS→SQS subscription, or S3 → SQS).

    snsd-wire --queue snsd-records                       # queues only (listeners forward to it)
    snsd-wire --queue snsd-records --feed sns            # S3 -> SNS topic -> SQS queue
    snsd-wire --queue snsd-records --feed s3             # S3 -> SQS queue

Every step compares what exists with what it wants first, so running it again changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from botocore.exceptions import ClientError

DEFAULT_MAX_RECEIVES = 5
DEFAULT_VISIBILITY = 60
RETENTION = 14 * 24 * 3600  # the most SQS keeps a message: dead letters wait as long as they can


@dataclass(frozen=True)
class QueueWiring:
    queue_url: str
    queue_arn: str
    dead_letter_url: str
    dead_letter_arn: str
    actions: tuple[str, ...] = ()


def dead_letter_name(queue: str) -> str:
    return f"{queue}-dead-letters"


def _arn(sqs, url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def _ensure_queue(sqs, name: str, wanted: dict[str, str], actions: list[str]) -> str:
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError as exc:
        if "NonExistentQueue" not in str(exc) and "QueueDoesNotExist" not in str(exc):
            raise
        url = sqs.create_queue(QueueName=name, Attributes=wanted)["QueueUrl"]
        actions.append(f"created queue {url}")
        return url
    current = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(wanted)).get("Attributes", {})
    changed = {k: v for k, v in wanted.items() if _normal(k, current.get(k)) != _normal(k, v)}
    if changed:
        sqs.set_queue_attributes(QueueUrl=url, Attributes=changed)
        actions.append(f"queue {url}: set {', '.join(sorted(changed))}")
    else:
        actions.append(f"queue {url} exists, unchanged")
    return url


def _normal(name: str, value):
    if value is not None and name in ("RedrivePolicy", "Policy"):
        parsed = json.loads(value)
        if name == "RedrivePolicy":
            parsed["maxReceiveCount"] = int(parsed["maxReceiveCount"])
        return parsed
    return value


def ensure_queues(
    sqs,
    queue: str,
    max_receive_count: int = DEFAULT_MAX_RECEIVES,
    visibility_timeout: int = DEFAULT_VISIBILITY,
    actions: list[str] | None = None,
) -> QueueWiring:
    """The dead-letter queue, then the queue with a redrive policy to it after ``max_receive_count`` receives."""
    actions = [] if actions is None else actions
    dlq_url = _ensure_queue(sqs, dead_letter_name(queue), {"MessageRetentionPeriod": str(RETENTION)}, actions)
    dlq_arn = _arn(sqs, dlq_url)
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count})
    url = _ensure_queue(
        sqs,
        queue,
        {
            "RedrivePolicy": redrive,
            "VisibilityTimeout": str(visibility_timeout),
            "MessageRetentionPeriod": str(RETENTION),
        },
        actions,
    )
    return QueueWiring(url, _arn(sqs, url), dlq_url, dlq_arn, tuple(actions))


def allow_sender(sqs, queue_url: str, queue_arn: str, sid: str, service: str, source_arn: str, actions: list[str]):
    """Let ``service`` (sns.amazonaws.com, s3.amazonaws.com) send to the queue from ``source_arn`` only;
    statements of other senders are kept."""
    current = (
        sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["Policy"]).get("Attributes", {}).get("Policy")
    )
    policy = json.loads(current) if current else {"Version": "2012-10-17", "Statement": []}
    statement = {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"Service": service},
        "Action": "sqs:SendMessage",
        "Resource": queue_arn,
        "Condition": {"ArnLike": {"aws:SourceArn": source_arn}},
    }
    if statement in policy["Statement"]:
        actions.append(f"queue policy for {service} unchanged")
        return
    policy["Statement"] = [s for s in policy["Statement"] if s.get("Sid") != sid] + [statement]
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)})
    actions.append(f"queue policy: {service} may send from {source_arn}")


def subscribe_queue(sns, sqs, topic_arn: str, wiring: QueueWiring, actions: list[str]) -> str:
    """An SNS→SQS subscription (not raw: the worker verifies the signed envelope)."""
    allow_sender(sqs, wiring.queue_url, wiring.queue_arn, "snsd-from-sns", "sns.amazonaws.com", topic_arn, actions)
    for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn):
        for sub in page.get("Subscriptions", []):
            if sub.get("Protocol") == "sqs" and sub.get("Endpoint") == wiring.queue_arn:
                actions.append(f"subscription of {wiring.queue_arn} exists: {sub['SubscriptionArn']}")
                return sub["SubscriptionArn"]
    arn = sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=wiring.queue_arn, ReturnSubscriptionArn=True)[
        "SubscriptionArn"
    ]
    actions.append(f"subscribed {wiring.queue_arn} to {topic_arn}: {arn}")
    return arn


def notify_queue(s3, sqs, bucket: str, wiring: QueueWiring, actions: list[str]) -> None:
    """The bucket's ``s3:ObjectCreated:*`` notification straight to the queue; other notifications kept."""
    allow_sender(
        sqs, wiring.queue_url, wiring.queue_arn, "snsd-from-s3", "s3.amazonaws.com", f"arn:aws:s3:::{bucket}", actions
    )
    current = s3.get_bucket_notification_configuration(Bucket=bucket)
    current.pop("ResponseMetadata", None)
    ours = {
        "Id": f"snsd-{wiring.queue_arn.rsplit(':', 1)[-1]}",
        "QueueArn": wiring.queue_arn,
        "Events": ["s3:ObjectCreated:*"],
    }
    queues = current.get("QueueConfigurations", [])
    if any(c.get("QueueArn") == ours["QueueArn"] and sorted(c.get("Events", [])) == ours["Events"] for c in queues):
        actions.append("bucket notification to the queue unchanged")
        return
    config = {k: v for k, v in current.items() if k in ("TopicConfigurations", "LambdaFunctionConfigurations")}
    if "EventBridgeConfiguration" in current:
        config["EventBridgeConfiguration"] = current["EventBridgeConfiguration"]
    config["QueueConfigurations"] = [c for c in queues if c.get("QueueArn") != ours["QueueArn"]] + [ours]
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=config)
    actions.append(f"set bucket notification s3:ObjectCreated:* -> {wiring.queue_arn}")
