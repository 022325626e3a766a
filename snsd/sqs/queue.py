"""The SQS queue as the forwarder and the worker see it: a few calls that return Deferreds.

boto3 blocks, so each call runs in a thread of a small pool of its own (``SQS_IO_THREADS`` in
snsd/daemon.py), never on the job pool: a long poll holds its thread for up to 20 s, and jobs
must not wait behind it, nor a send behind a busy job pool.  treq would avoid the threads, but
SQS requests need SigV4 signing and the endpoint, region and credential resolution that boto3
already does from the standard AWS environment; the threads cost far less than re-doing that.

:class:`SQSQueue` is the one implementation against AWS (or LocalStack); the tests' in-memory
queue (``tests/sqs_fakes.py``) has the same methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from botocore.config import Config

from snsd.awsclients import SharedClient

# The longest long poll SQS allows, and so the fewest empty receives while the queue is quiet.
LONG_POLL = 20
# SendMessageBatch, DeleteMessageBatch and ChangeMessageVisibilityBatch take at most 10 entries.
BATCH = 10

# A long poll holds the connection for LONG_POLL s: the read timeout must be longer.  Retries are
# the caller's business (the forwarder backs off, the worker polls again), so botocore's own stay
# few: during an outage a call should fail in seconds, not minutes.
SQS_CONFIG = Config(
    connect_timeout=3,
    read_timeout=LONG_POLL + 10,
    retries={"max_attempts": 2, "mode": "standard"},
    max_pool_connections=8,
)


@dataclass(frozen=True)
class QueueMessage:
    """One received message: what the worker needs of it."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int = 1  # ApproximateReceiveCount: > 1 means a redelivery


@dataclass(frozen=True)
class SendResult:
    """What SendMessageBatch confirmed (``sent``: the entries' ids) and what it refused (id -> reason)."""

    sent: tuple[str, ...]
    failed: dict[str, str]


class SQSQueue:
    """One queue URL; ``io`` runs the blocking calls (anything with ``submit(fn, *args)``)."""

    def __init__(self, url: str, io, client: SharedClient | None = None):
        self.url = url
        self._io = io
        self._sqs = client or SharedClient("sqs", SQS_CONFIG)

    def send_batch(self, entries: Sequence[tuple[str, str]]) -> object:
        """Send up to :data:`BATCH` ``(id, body)`` entries in one call; fires with a :class:`SendResult`."""
        assert 0 < len(entries) <= BATCH

        def send():
            answer = self._sqs.get().send_message_batch(
                QueueUrl=self.url, Entries=[{"Id": i, "MessageBody": body} for i, body in entries]
            )
            failed = {f["Id"]: f"{f.get('Code')}: {f.get('Message', '')}" for f in answer.get("Failed", [])}
            return SendResult(tuple(s["Id"] for s in answer.get("Successful", [])), failed)

        return self._io.submit(send)

    def receive(self, max_messages: int, wait: int = LONG_POLL, visibility: int | None = None):
        """Long-poll for up to ``max_messages`` (1-10); fires with a list of :class:`QueueMessage`."""

        def receive():
            kwargs = {"VisibilityTimeout": visibility} if visibility is not None else {}
            answer = self._sqs.get().receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=max(1, min(BATCH, max_messages)),
                WaitTimeSeconds=wait,
                AttributeNames=["ApproximateReceiveCount"],
                **kwargs,
            )
            return [
                QueueMessage(
                    m["MessageId"],
                    m["ReceiptHandle"],
                    m["Body"],
                    int(m.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
                )
                for m in answer.get("Messages", [])
            ]

        return self._io.submit(receive)

    def delete(self, receipt_handles: Sequence[str]):
        """Delete up to :data:`BATCH` messages in one call; fires with the handles SQS did not delete."""
        handles = list(receipt_handles)
        assert 0 < len(handles) <= BATCH

        def delete():
            answer = self._sqs.get().delete_message_batch(
                QueueUrl=self.url, Entries=[{"Id": str(n), "ReceiptHandle": h} for n, h in enumerate(handles)]
            )
            return [handles[int(f["Id"])] for f in answer.get("Failed", [])]

        return self._io.submit(delete)

    def change_visibility(self, receipt_handles: Sequence[str], seconds: int):
        """Set each message's visibility timeout to ``seconds`` from now (0: visible again at once)."""
        handles = list(receipt_handles)

        def change():
            for start in range(0, len(handles), BATCH):
                chunk = handles[start : start + BATCH]
                self._sqs.get().change_message_visibility_batch(
                    QueueUrl=self.url,
                    Entries=[
                        {"Id": str(n), "ReceiptHandle": h, "VisibilityTimeout": seconds} for n, h in enumerate(chunk)
                    ],
                )

        return self._io.submit(change)

    def depth(self):
        """ApproximateNumberOfMessages: visible messages waiting."""

        def depth():
            attributes = self._sqs.get().get_queue_attributes(
                QueueUrl=self.url, AttributeNames=["ApproximateNumberOfMessages"]
            )["Attributes"]
            return int(attributes.get("ApproximateNumberOfMessages", 0))

        return self._io.submit(depth)
