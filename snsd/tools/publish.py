"""Publish an S3 event to the SNS topic through the SNS Query API, with treq.

The message is ``event.json`` (default), a given file, or a generated S3 event for
``--bucket``/``--key``.  The request is SigV4-signed with botocore, so the same command works
against LocalStack (dummy credentials) and AWS.

    snsd-publish --endpoint-url http://127.0.0.1:4566 --bucket incoming --key "uploads/a b+c.csv"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlencode
from xml.etree import ElementTree

import boto3
import treq
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from twisted.internet import defer, task

from snsd.tools import load_message

DEFAULT_TOPIC = "snsd-uploads"
DEFAULT_ACCOUNT = "000000000000"  # LocalStack's account
SNS_API_VERSION = "2010-03-31"


@dataclass(frozen=True)
class PublishResult:
    status: int
    message_id: str | None
    error: str | None
    body: str


def topic_arn_for(topic: str, region: str, account: str = DEFAULT_ACCOUNT) -> str:
    return topic if topic.startswith("arn:") else f"arn:aws:sns:{region}:{account}:{topic}"


def _credentials() -> Credentials:
    found = boto3.session.Session().get_credentials()
    if found is None:
        return Credentials("test", "test")
    frozen = found.get_frozen_credentials()
    return Credentials(frozen.access_key, frozen.secret_key, frozen.token)


def publish_request(
    endpoint_url: str,
    topic_arn: str,
    message: str,
    region: str,
    subject: str | None = None,
    sign: bool = True,
) -> tuple[str, bytes, dict[str, str]]:
    """(url, body, headers) of a Query API ``Publish``; signed with SigV4 unless ``sign`` is false."""
    params = {"Action": "Publish", "Version": SNS_API_VERSION, "TopicArn": topic_arn, "Message": message}
    if subject:
        params["Subject"] = subject
    body = urlencode(params).encode("utf-8")
    url = endpoint_url.rstrip("/") + "/"
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    if sign:
        request = AWSRequest(method="POST", url=url, data=body, headers=headers)
        SigV4Auth(_credentials(), "sns", region).add_auth(request)
        headers = {name: str(value) for name, value in request.headers.items()}
    return url, body, headers


def parse_response(status: int, text: str) -> PublishResult:
    """Pull MessageId (or the error) out of the XML (Query) or JSON answer."""
    message_id = error = None
    try:
        document = json.loads(text)
        if isinstance(document, dict):
            message_id = document.get("MessageId") or document.get("PublishResponse", {}).get("PublishResult", {}).get(
                "MessageId"
            )
            error = document.get("message") or document.get("Message") or document.get("__type")
    except ValueError:
        try:
            root = ElementTree.fromstring(text)
        except ElementTree.ParseError:
            root = None
        if root is not None:
            values = {element.tag.rsplit("}", 1)[-1]: (element.text or "") for element in root.iter()}
            message_id = values.get("MessageId")
            if "Code" in values:
                error = f"{values['Code']}: {values.get('Message', '')}".strip()
    return PublishResult(status=status, message_id=message_id, error=None if status < 300 else error, body=text)


async def publish(
    endpoint_url: str,
    topic_arn: str,
    message: str,
    region: str = "us-east-1",
    subject: str | None = None,
    sign: bool = True,
    client=treq,
) -> PublishResult:
    url, body, headers = publish_request(endpoint_url, topic_arn, message, region, subject, sign)
    response = await client.post(url, data=body, headers=headers, timeout=30)
    text = await response.text("utf-8")
    return parse_response(response.code, text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snsd-publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", nargs="?", help="message file (default: ./event.json if present)")
    parser.add_argument(
        "--endpoint-url",
        default=os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("LOCALSTACK_URL") or "http://127.0.0.1:4566",
        help="SNS endpoint (default %(default)s)",
    )
    parser.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
    parser.add_argument("--topic", default=DEFAULT_TOPIC, help="topic name or ARN (default %(default)s)")
    parser.add_argument("--topic-arn", default=None, help="topic ARN (overrides --topic)")
    parser.add_argument("--account", default=DEFAULT_ACCOUNT, help="account id for a topic name (default LocalStack's)")
    parser.add_argument("--bucket", default=None, help="generate an event for this bucket (default incoming)")
    parser.add_argument("--key", action="append", default=None, help="generate a record for this key (repeatable)")
    parser.add_argument("--subject", default=None)
    parser.add_argument("--unsigned", action="store_true", help="send without SigV4 (LocalStack accepts it)")
    return parser


async def _run(args: argparse.Namespace) -> int:
    try:
        message = load_message(args.file, args.bucket, args.key, args.region)
    except (OSError, ValueError) as exc:
        print(f"snsd-publish: cannot read the message: {exc}", file=sys.stderr)
        return 2
    topic_arn = args.topic_arn or topic_arn_for(args.topic, args.region, args.account)
    print(f"POST {args.endpoint_url} Publish TopicArn={topic_arn}")
    print(f"Message: {message.strip()}")
    try:
        result = await publish(args.endpoint_url, topic_arn, message, args.region, args.subject, not args.unsigned)
    except Exception as exc:  # connection refused, timeout, DNS: say it in one line
        print(f"snsd-publish: request failed: {exc!r}", file=sys.stderr)
        return 1
    print(f"HTTP {result.status} MessageId={result.message_id}" + (f" error={result.error}" if result.error else ""))
    if result.status >= 300:
        print(result.body, file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)

    async def run(reactor) -> None:
        code = await _run(args)
        if code:
            raise SystemExit(code)

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
