"""The SQS dead-letter queue, as ``snsd-admin --queue URL dead-letters list|export|replay`` sees it.

SQS moves a message there after the queue's ``maxReceiveCount`` receives (its redrive policy,
which names the dead-letter queue: nothing else needs configuring).  Listing and exporting hide
each message for a few seconds while it is read and then make it visible again, so every message
is read once and none is consumed; replay sends each body back to the main queue, unchanged,
and deletes it from the dead letters only once the send succeeded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import boto3

from snsd.awsclients import SharedClient
from snsd.sqs.queue import BATCH, SQS_CONFIG

PEEK_VISIBILITY = 30  # seconds a message is hidden while it is listed


@dataclass(frozen=True)
class QueuedDeadLetter:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    sent_at: float  # epoch seconds

    def objects(self) -> list[str]:
        """``s3://bucket/key`` of each record in the body, as far as it can be read without a check."""
        try:
            data = json.loads(self.body)
        except ValueError:
            return []
        if isinstance(data, dict) and data.get("snsd") == "record" and isinstance(data.get("record"), dict):
            return [f"s3://{data['record'].get('bucket')}/{data['record'].get('key')}"]
        if isinstance(data, dict) and isinstance(data.get("Message"), str):
            try:
                data = json.loads(data["Message"])
            except ValueError:
                return []
        records = data.get("Records") if isinstance(data, dict) else None
        found = []
        for record in records if isinstance(records, list) else []:
            s3 = record.get("s3", {}) if isinstance(record, dict) else {}
            found.append(f"s3://{s3.get('bucket', {}).get('name')}/{s3.get('object', {}).get('key')}")
        return found


class DeadLetterQueue:
    def __init__(self, queue_url: str, client=None):
        self.queue_url = queue_url
        self.sqs = (
            client or SharedClient("sqs", SQS_CONFIG, factory=lambda: boto3.client("sqs", config=SQS_CONFIG)).get()
        )
        self.url = self._dead_letter_url()

    def _dead_letter_url(self) -> str:
        attributes = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["RedrivePolicy"])
        policy = attributes.get("Attributes", {}).get("RedrivePolicy")
        if not policy:
            raise SystemExit(f"snsd-admin: {self.queue_url} has no redrive policy, so no dead-letter queue")
        arn = json.loads(policy)["deadLetterTargetArn"]
        _, _, _, _, account, name = arn.split(":", 5)
        return self.sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]

    def _receive(self, visibility: int) -> list[QueuedDeadLetter]:
        answer = self.sqs.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=BATCH,
            WaitTimeSeconds=1,
            VisibilityTimeout=visibility,
            AttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        )
        return [
            QueuedDeadLetter(
                m["MessageId"],
                m["ReceiptHandle"],
                m["Body"],
                int(m.get("Attributes", {}).get("ApproximateReceiveCount", 0)),
                int(m.get("Attributes", {}).get("SentTimestamp", 0)) / 1000,
            )
            for m in answer.get("Messages", [])
        ]

    def read(self, limit: int | None = None, ids: set[str] | None = None) -> Iterator[QueuedDeadLetter]:
        """Each dead letter once (hidden while read, visible again afterwards)."""
        seen: dict[str, str] = {}
        try:
            while limit is None or len(seen) < limit:
                batch = [m for m in self._receive(PEEK_VISIBILITY) if m.message_id not in seen]
                if not batch:
                    return
                for letter in batch:
                    seen[letter.message_id] = letter.receipt_handle
                    if ids is None or letter.message_id in ids:
                        yield letter
        finally:
            self._release(list(seen.values()))

    def _release(self, handles: list[str]) -> None:
        for start in range(0, len(handles), BATCH):
            chunk = handles[start : start + BATCH]
            self.sqs.change_message_visibility_batch(
                QueueUrl=self.url,
                Entries=[{"Id": str(n), "ReceiptHandle": h, "VisibilityTimeout": 0} for n, h in enumerate(chunk)],
            )

    def replay(self, ids: set[str] | None = None) -> Iterator[tuple[QueuedDeadLetter, bool, str | None]]:
        """Send each (selected) dead letter back to the main queue; delete it once sent."""
        skipped = []
        try:
            while True:
                batch = self._receive(PEEK_VISIBILITY)
                chosen = [m for m in batch if ids is None or m.message_id in ids]
                skipped += [m.receipt_handle for m in batch if m not in chosen]
                if not batch:  # every message was read once (those read stay hidden meanwhile)
                    return
                for letter in chosen:
                    try:
                        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=letter.body)
                    except Exception as e:  # the letter stays where it is, visible again soon
                        yield letter, False, f"{type(e).__name__}: {e}"
                        continue
                    self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=letter.receipt_handle)
                    yield letter, True, None
        finally:
            self._release(skipped)
