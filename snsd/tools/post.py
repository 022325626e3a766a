"""POST SNS-shaped Notifications straight to a listener, for load and debugging, with treq.

The ``Message`` is ``event.json`` (default), a given file or a generated S3 event.  Each copy gets
its own MessageId unless ``--same-id`` (to exercise deduplication).  With ``--sign-key`` and
``--cert-url`` the envelopes are signed the way SNS signs them, so a verifying snsd accepts them
when it trusts the certificate's host.  Connections are kept alive and reused.

    snsd-post http://127.0.0.1:8080/ -n 1000 -c 16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from twisted.internet import defer, task
from twisted.web.client import Agent, HTTPConnectionPool

from snsd.tools import load_message

DEFAULT_URL = "http://127.0.0.1:8080/"
DEFAULT_TOPIC_ARN = "arn:aws:sns:us-east-1:000000000000:snsd-uploads"


def _timestamp(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def build_notification(
    message: str,
    topic_arn: str = DEFAULT_TOPIC_ARN,
    message_id: str | None = None,
    sign_key_pem: bytes | None = None,
    cert_url: str | None = None,
    signature_version: str = "1",
    subject: str | None = None,
    now: datetime | None = None,
) -> dict:
    """The JSON fields of one SNS Notification, signed when ``sign_key_pem`` is given."""
    region = topic_arn.split(":")[3] if topic_arn.count(":") >= 5 else "us-east-1"
    origin = f"https://sns.{region}.amazonaws.com"
    if cert_url:
        parts = urlsplit(cert_url)
        origin = f"{parts.scheme}://{parts.netloc}"
    fields: dict = {
        "Type": "Notification",
        "MessageId": message_id or str(uuid.uuid4()),
        "TopicArn": topic_arn,
        "Message": message,
        "Timestamp": _timestamp(now),
        "SignatureVersion": signature_version,
        "UnsubscribeURL": f"{origin}/?Action=Unsubscribe&SubscriptionArn={topic_arn}:{uuid.uuid4()}",
    }
    if subject is not None:
        fields["Subject"] = subject
    if cert_url:
        fields["SigningCertURL"] = cert_url
    if sign_key_pem is not None:
        # Imported here: the trust package is only needed when signing.
        from snsd.trust.signing import sign_fields

        fields = sign_fields(fields, sign_key_pem, signature_version)
    return fields


def headers_for(fields: dict) -> dict[str, list[str]]:
    return {
        "Content-Type": ["text/plain; charset=UTF-8"],
        "User-Agent": ["Amazon Simple Notification Service Agent"],
        "x-amz-sns-message-type": [fields["Type"]],
        "x-amz-sns-message-id": [fields["MessageId"]],
        "x-amz-sns-topic-arn": [fields["TopicArn"]],
    }


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@dataclass(frozen=True)
class Answer:
    message_id: str
    status: str  # "200", "403", ... or "error:ConnectionRefusedError"
    latency: float
    body: str


@dataclass(frozen=True)
class Summary:
    answers: tuple[Answer, ...]
    elapsed: float

    @property
    def by_status(self) -> dict[str, int]:
        return dict(sorted(Counter(a.status for a in self.answers).items()))

    @property
    def ok(self) -> bool:
        return all(a.status.startswith("2") for a in self.answers)

    def describe(self) -> str:
        latencies = [a.latency for a in self.answers]
        rate = len(self.answers) / self.elapsed if self.elapsed > 0 else float("inf")
        statuses = ", ".join(f"{status}: {count}" for status, count in self.by_status.items())
        return (
            f"sent {len(self.answers)} in {self.elapsed:.3f}s ({rate:.1f} req/s); status {statuses}; "
            f"latency p50 {percentile(latencies, 0.5) * 1000:.1f} ms, p99 {percentile(latencies, 0.99) * 1000:.1f} ms"
        )


async def post_all(reactor, url: str, envelopes: Iterable[dict], concurrency: int, client=None) -> Summary:
    """POST every envelope to ``url`` with at most ``concurrency`` in flight over kept-alive connections."""
    if client is None:
        from treq.client import HTTPClient

        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = concurrency
        client = HTTPClient(Agent(reactor, pool=pool))
    else:
        pool = None
    queue = iter(envelopes)
    answers: list[Answer] = []

    async def worker() -> None:
        for fields in queue:  # the shared iterator hands each envelope to exactly one worker
            body = json.dumps(fields).encode("utf-8")
            started = reactor.seconds()
            try:
                response = await client.post(url, data=body, headers=headers_for(fields), timeout=30)
                text = await response.text("utf-8")
                status = str(response.code)
            except Exception as exc:  # counted and reported, never fatal to the run
                text, status = str(exc), f"error:{type(exc).__name__}"
            answers.append(Answer(fields["MessageId"], status, reactor.seconds() - started, text))

    started = reactor.seconds()
    try:
        await defer.gatherResults([defer.ensureDeferred(worker()) for _ in range(max(1, concurrency))])
    finally:
        if pool is not None:
            await pool.closeCachedConnections()
    return Summary(tuple(answers), reactor.seconds() - started)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snsd-post", description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", default=DEFAULT_URL, help="listener URL (default %(default)s)")
    parser.add_argument("--file", default=None, help="message file (default: ./event.json if present)")
    parser.add_argument("--bucket", default=None, help="generate an event for this bucket (default incoming)")
    parser.add_argument("--key", action="append", default=None, help="generate a record for this key (repeatable)")
    parser.add_argument("-n", "--count", type=int, default=1, help="number of copies (default 1)")
    parser.add_argument("-c", "--concurrency", type=int, default=1, help="requests in flight (default 1)")
    parser.add_argument("--same-id", action="store_true", help="give every copy the same MessageId")
    parser.add_argument("--topic-arn", default=os.environ.get("SNSD_TOPIC_ARN") or DEFAULT_TOPIC_ARN)
    parser.add_argument("--subject", default=None)
    parser.add_argument("--sign-key", default=None, metavar="PEM", help="RSA private key to sign with")
    parser.add_argument("--cert-url", default=None, metavar="URL", help="SigningCertURL to put in the envelope")
    parser.add_argument("--signature-version", choices=("1", "2"), default="1")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every answer")
    return parser


async def _run(reactor, args: argparse.Namespace) -> int:
    if args.count < 1 or args.concurrency < 1:
        print("snsd-post: -n and -c must be at least 1", file=sys.stderr)
        return 2
    try:
        message = load_message(args.file, args.bucket, args.key)
        key = Path(args.sign_key).read_bytes() if args.sign_key else None
    except (OSError, ValueError) as exc:
        print(f"snsd-post: {exc}", file=sys.stderr)
        return 2
    if key is not None and not args.cert_url:
        print("snsd-post: --sign-key needs --cert-url (where the listener fetches the certificate)", file=sys.stderr)
        return 2
    shared_id = str(uuid.uuid4()) if args.same_id else None

    def envelope() -> dict:
        return build_notification(
            message, args.topic_arn, shared_id, key, args.cert_url, args.signature_version, args.subject
        )

    first = envelope()

    def envelopes():
        yield first
        for _ in range(args.count - 1):
            yield envelope()

    print(f"POST {args.url} x{args.count} (concurrency {args.concurrency}); first envelope:")
    print(json.dumps(first, indent=2, ensure_ascii=False))
    summary = await post_all(reactor, args.url, envelopes(), args.concurrency)
    shown: set[str] = set()
    for answer in summary.answers:
        # One sample body per status unless -v: a thousand identical lines help nobody.
        if args.verbose or answer.status not in shown:
            print(f"{answer.status} {answer.message_id} {answer.latency * 1000:.1f} ms {answer.body.strip()[:300]}")
            shown.add(answer.status)
    print(summary.describe())
    return 0 if summary.ok else 1


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)

    async def run(reactor) -> None:
        code = await _run(reactor, args)
        if code:
            raise SystemExit(code)

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
