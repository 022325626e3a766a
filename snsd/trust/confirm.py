"""Confirming an SNS subscription by requesting its ``SubscribeURL`` — carefully.

A ``SubscribeURL`` is an instruction to make an outbound request, so it is the classic SSRF
lever.  It is requested only when it passes the same host rule as certificate URLs, asks for
``Action=ConfirmSubscription`` and names the signed ``TopicArn`` (and, when present, the signed
``Token``).  Otherwise :class:`TrustError` 403 and no request at all.  The caller must have
verified the envelope first (:meth:`snsd.trust.verifier.MessageVerifier.verify`).

The answer is AWS's ConfirmSubscription XML; its ``SubscriptionArn`` is returned.  The parser
refuses any DTD, so no entity (external or recursive) is ever expanded, and the body is capped.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree

from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.interfaces import IReactorTime

from snsd import metrics
from snsd.envelope import SUBSCRIPTION_CONFIRMATION, SNSEnvelope
from snsd.logs import Logger
from snsd.trust.errors import TrustError
from snsd.trust.fetch import get_bounded
from snsd.trust.hosts import HostTrust

log = Logger()


def _local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def parse_confirmation(body: bytes) -> str:
    """The SubscriptionArn in a ConfirmSubscription answer (any namespace); ``ValueError`` if none."""
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise ValueError("DTDs are not accepted")
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as e:
        raise ValueError(f"not XML: {e}") from None
    if _local_name(root.tag) != "ConfirmSubscriptionResponse":
        raise ValueError(f"unexpected root element {_local_name(root.tag)!r}")
    for result in root:
        if _local_name(result.tag) != "ConfirmSubscriptionResult":
            continue
        for element in result:
            if _local_name(element.tag) == "SubscriptionArn" and element.text and element.text.strip():
                return element.text.strip()
    raise ValueError("no SubscriptionArn in the answer")


def _single(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name, [])
    return values[0] if len(values) == 1 else None


class SubscriptionConfirmer:
    def __init__(
        self,
        http_client,
        host_trust: HostTrust,
        timeout: float = 10.0,
        clock: IReactorTime | None = None,
        max_bytes: int = 65536,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self._http = http_client
        self._host_trust = host_trust
        self._clock = clock
        self.timeout = timeout
        self.max_bytes = max_bytes

    def confirm(self, envelope: SNSEnvelope) -> Deferred[str]:
        """Request the SubscribeURL of a verified SubscriptionConfirmation; fire with the SubscriptionArn."""
        try:
            url = self._check(envelope)
        except TrustError as e:
            metrics.SIGNATURE_FAILURES.labels(reason=e.reason).inc()
            log.warn(
                "not confirming {message_id} from {topic}: {reason} {detail}",
                message_id=envelope.message_id,
                topic=envelope.topic_arn,
                reason=e.reason,
                detail=e.detail,
            )
            return fail(e)
        d = ensureDeferred(get_bounded(self._http, url, self.max_bytes))
        d.addTimeout(self.timeout, self._clock)
        d.addCallbacks(self._confirmed, self._failed, callbackArgs=(envelope,), errbackArgs=(envelope,))
        return d

    def _check(self, envelope: SNSEnvelope) -> str:
        if envelope.type != SUBSCRIPTION_CONFIRMATION or not envelope.subscribe_url:
            raise TrustError(400, "not_a_subscription_confirmation", envelope.type)
        url = envelope.subscribe_url
        self._host_trust.check_subscribe_url(url, envelope.region)
        query = parse_qs(urlsplit(url).query, keep_blank_values=True)
        if _single(query, "Action") != "ConfirmSubscription":
            raise TrustError(403, "subscribe_url_mismatch", "Action is not ConfirmSubscription")
        if _single(query, "TopicArn") != envelope.topic_arn:
            raise TrustError(403, "subscribe_url_mismatch", "TopicArn differs from the signed one")
        if "Token" in query and _single(query, "Token") != envelope.token:
            raise TrustError(403, "subscribe_url_mismatch", "Token differs from the signed one")
        return url

    def _confirmed(self, body: bytes, envelope: SNSEnvelope) -> str:
        try:
            subscription_arn = parse_confirmation(body)
        except ValueError as e:
            raise TrustError(502, "confirmation_failed", str(e)) from None
        log.info(
            "confirmed subscription {subscription_arn} to {topic} ({message_id})",
            subscription_arn=subscription_arn,
            topic=envelope.topic_arn,
            message_id=envelope.message_id,
        )
        return subscription_arn

    def _failed(self, failure, envelope: SNSEnvelope):
        detail = failure.getErrorMessage() or failure.type.__name__
        log.warn(
            "confirming {message_id} for {topic} failed: {detail}",
            message_id=envelope.message_id,
            topic=envelope.topic_arn,
            detail=detail,
        )
        raise TrustError(502, "confirmation_failed", detail)
