"""The SNS HTTP envelope: one parser, one frozen value.

SNS posts its JSON with ``Content-Type: text/plain``, so the body is parsed whatever the
content type says.  Every field used downstream comes from the (signed) body; the
``x-amz-sns-message-type`` header is only cross-checked, never trusted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import orjson

NOTIFICATION = "Notification"
SUBSCRIPTION_CONFIRMATION = "SubscriptionConfirmation"
UNSUBSCRIBE_CONFIRMATION = "UnsubscribeConfirmation"

_COMMON_FIELDS = ("Type", "MessageId", "TopicArn", "Message", "Timestamp")
_REQUIRED_BY_TYPE = {
    NOTIFICATION: _COMMON_FIELDS,
    SUBSCRIPTION_CONFIRMATION: _COMMON_FIELDS + ("SubscribeURL", "Token"),
    UNSUBSCRIBE_CONFIRMATION: _COMMON_FIELDS + ("SubscribeURL", "Token"),
}


class BadEnvelope(ValueError):
    """The body is not a usable SNS envelope; answered with 400 and the reason."""


@dataclass(frozen=True)
class SNSEnvelope:
    type: str
    message_id: str
    topic_arn: str
    message: str
    timestamp: str
    subject: str | None
    signature_version: str | None
    signature: str | None
    signing_cert_url: str | None
    subscribe_url: str | None
    token: str | None
    # The decoded JSON object, kept so the signature checker can build the exact
    # string to sign and the spool can store the original envelope.
    fields: dict
    raw: bytes

    @property
    def region(self) -> str | None:
        """The region part of the TopicArn (arn:aws:sns:<region>:<account>:<name>)."""
        parts = self.topic_arn.split(":")
        return parts[3] if len(parts) >= 6 else None


def parse_envelope(body: bytes, type_header: str | None = None) -> SNSEnvelope:
    """Parse an SNS POST body; raise :class:`BadEnvelope` with a short reason if unusable."""
    try:
        fields = orjson.loads(body)
    except ValueError:  # orjson.JSONDecodeError, for bad UTF-8 too
        raise BadEnvelope("body is not JSON") from None
    if not isinstance(fields, dict):
        raise BadEnvelope("body is not a JSON object")
    message_type = _required(fields, "Type")
    if message_type not in _REQUIRED_BY_TYPE:
        raise BadEnvelope(f"unknown Type: {message_type[:64]}")
    for name in _REQUIRED_BY_TYPE[message_type]:
        _required(fields, name)
    if type_header is not None and type_header != message_type:
        raise BadEnvelope("x-amz-sns-message-type header does not match Type")

    def optional(name: str) -> str | None:
        value = fields.get(name)
        # A present field of the wrong type is a bad envelope, not an absent field: taking a
        # numeric Signature for "unsigned" would answer 403 for what is malformed input.
        if value is not None and not isinstance(value, str):
            raise BadEnvelope(f"field {name} must be a string")
        return value

    return SNSEnvelope(
        type=message_type,
        message_id=fields["MessageId"],
        topic_arn=fields["TopicArn"],
        message=fields["Message"],
        timestamp=fields["Timestamp"],
        subject=optional("Subject"),
        signature_version=optional("SignatureVersion"),
        signature=optional("Signature"),
        signing_cert_url=optional("SigningCertURL") or optional("SigningCertUrl"),
        subscribe_url=optional("SubscribeURL"),
        token=optional("Token"),
        fields=fields,
        raw=body,
    )


def _required(fields: dict, name: str) -> str:
    """A field every envelope of its Type carries; JSON null counts as absent."""
    value = fields.get(name)
    if value is None:
        raise BadEnvelope(f"missing field: {name}")
    if not isinstance(value, str):
        raise BadEnvelope(f"field {name} must be a string")
    if not value and name != "Message":  # an empty Message is a valid (if useless) notification
        raise BadEnvelope(f"field {name} is empty")
    return value


def raw_delivery_envelope(body: bytes, message_id: str | None, topic_arn: str | None) -> SNSEnvelope:
    """An envelope for a raw message delivery: the body is the message itself, unsigned.

    Its MessageId and TopicArn come from the ``x-amz-sns-message-id`` and
    ``x-amz-sns-topic-arn`` headers, which nothing vouches for.
    """
    if not message_id:
        raise BadEnvelope("missing header: x-amz-sns-message-id")
    if not topic_arn:
        raise BadEnvelope("missing header: x-amz-sns-topic-arn")
    try:
        message = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadEnvelope("body is not UTF-8") from None
    fields = {"Type": NOTIFICATION, "MessageId": message_id, "TopicArn": topic_arn, "Message": message}
    return SNSEnvelope(
        type=NOTIFICATION,
        message_id=message_id,
        topic_arn=topic_arn,
        message=message,
        timestamp="",
        subject=None,
        signature_version=None,
        signature=None,
        signing_cert_url=None,
        subscribe_url=None,
        token=None,
        fields=fields,
        raw=json.dumps(fields).encode("utf-8"),
    )
