"""The trust decision for one SNS envelope, in the order that keeps it cheap and SSRF-free.

:meth:`MessageVerifier.precheck` is synchronous and touches no network: topic allow-list,
signed Timestamp (max age and future skew), SignatureVersion, and the SigningCertURL trust rule.
Only a message that passes it can make snsd fetch anything.  :meth:`MessageVerifier.verify`
then fetches the certificate (cached) and checks the signature.  Every refusal is a
:class:`TrustError` carrying the HTTP status to answer with, is counted in
``snsd_signature_failures_total{reason}`` and logged with the MessageId and topic.
"""

from __future__ import annotations

from datetime import datetime

from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

from snsd import metrics
from snsd.envelope import SNSEnvelope
from snsd.logs import Logger
from snsd.trust.certs import CertificateStore
from snsd.trust.errors import TrustError
from snsd.trust.hosts import HostTrust
from snsd.trust.offload import check_inline
from snsd.trust.signing import DIGESTS
from snsd.trust.topics import TopicAllowList

__all__ = ["MessageVerifier", "TrustError"]

log = Logger()

#: How far in the future a signed Timestamp may be (clock skew between SNS and us).
MAX_FUTURE_SKEW = 300.0


def parse_timestamp(text: str) -> float:
    """SNS's ISO 8601 UTC timestamp (``2012-05-02T00:54:06.655Z``) as epoch seconds."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("timestamp has no time zone")
    return moment.timestamp()


class MessageVerifier:
    def __init__(
        self,
        certificates: CertificateStore,
        host_trust: HostTrust,
        topics: TopicAllowList,
        clock: IReactorTime,
        max_age: float = 3600.0,
        verify_signatures: bool = True,
        checks=None,
    ) -> None:
        self._certificates = certificates
        self._host_trust = host_trust
        self._topics = topics
        self._clock = clock
        self.max_age = max_age
        self.verify_signatures = verify_signatures
        # Where the RSA check runs: inline by default; the daemon hands it to a thread
        # (snsd.trust.offload.SignatureChecks).
        self._check = checks.check if checks is not None else check_inline

    def allows_topic(self, topic_arn: str) -> bool:
        """The topic allow-list alone (for raw deliveries, which carry nothing else to check)."""
        return self._topics.allows(topic_arn)

    def precheck(self, envelope: SNSEnvelope) -> None:
        """The cheap, network-free checks; raise :class:`TrustError` on the first failure."""
        try:
            self._precheck(envelope)
        except TrustError as e:
            self._refused(envelope, e)
            raise

    def verify(self, envelope: SNSEnvelope) -> Deferred[None]:
        """All checks, signature included; the Deferred fails with :class:`TrustError`.

        With the certificate cached (every message but a topic's first) and the checks inline
        (the default, and the daemon's in a quiet reactor turn), the Deferred has already fired;
        after a busy turn the daemon's checks are made in a thread and fire it a turn or two later.
        """
        try:
            self._precheck(envelope)
            if not self.verify_signatures:
                log.warn(
                    "signature NOT verified for {message_id} from {topic}: verification is off",
                    message_id=envelope.message_id,
                    topic=envelope.topic_arn,
                )
                return succeed(None)
            assert envelope.signing_cert_url is not None  # _precheck made sure
            certificate = self._certificates.cached(envelope.signing_cert_url)
        except TrustError as e:
            self._refused(envelope, e)
            return fail(e)
        if certificate is not None:
            return self._check(envelope.fields, certificate).addErrback(self._check_failed, envelope)
        return ensureDeferred(self._verify_fetched(envelope))

    async def _verify_fetched(self, envelope: SNSEnvelope) -> None:
        try:
            certificate = await self._certificates.fetch(envelope.signing_cert_url, envelope.region)
        except TrustError as e:
            self._refused(envelope, e)
            raise
        await self._check(envelope.fields, certificate).addErrback(self._check_failed, envelope)

    def _check_failed(self, failure, envelope: SNSEnvelope):
        failure.trap(TrustError)
        self._refused(envelope, failure.value)
        return failure

    def _precheck(self, envelope: SNSEnvelope) -> None:
        # Order matters: the topic first, so a stranger's POST is turned away before anything
        # else, and nothing here may make a request.
        if not self._topics.allows(envelope.topic_arn):
            raise TrustError(403, "topic_not_allowed", envelope.topic_arn[:200])
        region = envelope.region
        if not region or not envelope.topic_arn.startswith("arn:"):
            raise TrustError(403, "bad_topic_arn", envelope.topic_arn[:200])
        self._check_timestamp(envelope.timestamp)
        if not self.verify_signatures:
            return
        if not envelope.signature or not envelope.signing_cert_url:
            raise TrustError(403, "missing_signature")
        if envelope.signature_version not in DIGESTS:
            raise TrustError(403, "unsupported_signature_version", repr(envelope.signature_version)[:40])
        self._host_trust.check_cert_url(envelope.signing_cert_url, region)

    def _check_timestamp(self, timestamp: str) -> None:
        try:
            signed_at = parse_timestamp(timestamp)
        except ValueError:
            raise TrustError(403, "bad_timestamp", timestamp[:64]) from None
        age = self._clock.seconds() - signed_at
        if age > self.max_age:
            raise TrustError(403, "stale_timestamp", f"{age:.0f} s old")
        if age < -MAX_FUTURE_SKEW:
            raise TrustError(403, "future_timestamp", f"{-age:.0f} s ahead")

    def _refused(self, envelope: SNSEnvelope, error: TrustError) -> None:
        metrics.SIGNATURE_FAILURES.labels(reason=error.reason).inc()
        log.warn(
            "refused {message_id} from {topic}: {reason} ({status}) {detail}",
            message_id=envelope.message_id,
            topic=envelope.topic_arn,
            reason=error.reason,
            status=error.status,
            detail=error.detail,
        )
