"""Fetching, checking and caching SNS signing certificates.

Only URLs that pass :class:`~snsd.trust.hosts.HostTrust` are ever requested (checked again
here, whatever the caller already did).  A download has a timeout (from the injected clock,
covering the response *and* its body) and a size cap (a PEM is a few KB), follows no redirects
(a redirect could lead off the trusted host), and is parsed once.  Certificates are cached by
URL in a bounded LRU; an entry lives at most ``max_ttl`` seconds and never past the
certificate's notAfter.  Concurrent callers for the same URL share one download.

Trust in an AWS certificate comes from where it was fetched (https, certificate-verified by
treq's default agent, from ``sns.<region>.amazonaws.com``) plus its subject CN, validity dates
and RSA key, as in AWS's own SDK validators.  Certificates from trusted emulator hosts skip the
CN rule: LocalStack's is self-signed with a LocalStack CN.

**Preloaded certificates** (``--cert-dir``, for networks with no route to AWS) are files named
as the SigningCertURL's file name.  The URL rule still applies to every message's URL; a
preloaded certificate then stands in for the download and is checked like a downloaded one,
at the time of use.  :func:`load_certificate_dir` refuses, at startup, a folder it cannot read
or a file that is not an SNS certificate.

A **failed download** is remembered for ``failure_ttl`` seconds: a burst of messages naming a
certificate that cannot be fetched costs one GET, and each of them gets the same answer.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from snsd import metrics
from snsd.logs import Logger
from snsd.trust.errors import TrustError
from snsd.trust.fetch import FetchFailed, get_bounded
from snsd.trust.hosts import CERT_FILE_NAME, HostTrust

log = Logger()

# CNs AWS signs SNS messages with: sns.amazonaws.com in most regions, sns-signing.<region>.…
# in opt-in regions, sns-<region>.amazonaws.com(.cn) in GovCloud and China.
_SNS_COMMON_NAME = re.compile(
    r"sns\.amazonaws\.com|sns-signing\.[a-z0-9-]+\.amazonaws\.com(\.cn)?|sns-[a-z0-9-]+\.amazonaws\.com(\.cn)?"
)
# A certificate minted moments ago by an emulator on a machine whose clock is a little ahead
# must not be "not yet valid".
_NOT_BEFORE_SKEW = 300.0


def check_certificate(certificate: x509.Certificate, now: float, require_sns_cn: bool) -> None:
    """Refuse (403 ``untrusted_certificate``) a certificate outside its dates, with a foreign CN
    or a key SNS does not sign with."""
    not_before = certificate.not_valid_before_utc.timestamp()
    not_after = certificate.not_valid_after_utc.timestamp()
    if now + _NOT_BEFORE_SKEW < not_before:
        raise TrustError(403, "untrusted_certificate", "certificate is not valid yet")
    if now >= not_after:  # the cache drops entries at notAfter too: one boundary, one answer
        raise TrustError(403, "untrusted_certificate", "certificate has expired")
    check_signer(certificate, require_sns_cn)


def check_signer(certificate: x509.Certificate, require_sns_cn: bool) -> None:
    """The date-free part of :func:`check_certificate`: an RSA key and (unless waived) an SNS CN."""
    if not isinstance(certificate.public_key(), rsa.RSAPublicKey):
        raise TrustError(403, "untrusted_certificate", "certificate key is not RSA")
    if require_sns_cn:
        names = [a.value for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if len(names) != 1 or not isinstance(names[0], str) or not _SNS_COMMON_NAME.fullmatch(names[0]):
            raise TrustError(403, "untrusted_certificate", f"subject CN {names!r} is not an SNS one")


#: The largest certificate file read from --cert-dir (as the download cap: a PEM is a few KB).
MAX_CERT_BYTES = 16384


def load_certificate_dir(path: str) -> dict[str, x509.Certificate]:
    """The certificates in ``path`` by file name; ``ValueError`` with one clear line if the folder
    cannot be read or holds a file that is not an SNS signing certificate.

    Hidden entries are skipped: a Kubernetes ConfigMap or Secret mount keeps its bookkeeping
    (``..data``, ``..2025_…``) there.  Dates are checked when a certificate is used, not here.
    """
    try:
        names = sorted(os.listdir(path))
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    certificates: dict[str, x509.Certificate] = {}
    for name in names:
        if name.startswith("."):
            continue
        where = os.path.join(path, name)
        if not CERT_FILE_NAME.fullmatch(name):
            raise ValueError(f"{where}: not named as a SigningCertURL's file (SimpleNotificationService-<id>.pem)")
        try:
            with open(where, "rb") as f:
                body = f.read(MAX_CERT_BYTES + 1)
        except OSError as e:
            raise ValueError(f"cannot read {where}: {e.strerror or e}") from None
        if len(body) > MAX_CERT_BYTES:
            raise ValueError(f"{where}: larger than {MAX_CERT_BYTES} bytes, not a signing certificate")
        try:
            certificate = x509.load_pem_x509_certificate(body)
        except ValueError:
            raise ValueError(f"{where}: not a PEM certificate") from None
        try:
            check_signer(certificate, require_sns_cn=True)  # the dates are checked at each use
        except TrustError as e:
            raise ValueError(f"{where}: not an SNS signing certificate: {e.detail}") from None
        certificates[name] = certificate
    return certificates


class CertificateStore:
    def __init__(
        self,
        http_client,
        clock: IReactorTime,
        host_trust: HostTrust,
        timeout: float = 5.0,
        max_bytes: int = MAX_CERT_BYTES,
        max_entries: int = 64,
        max_ttl: float = 24 * 3600.0,
        preloaded: dict[str, x509.Certificate] | None = None,
        failure_ttl: float = 10.0,
    ) -> None:
        self._http = http_client
        self._clock = clock
        self._host_trust = host_trust
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self.failure_ttl = failure_ttl
        # file name -> certificate, from --cert-dir
        self._preloaded = dict(preloaded or {})
        if self._preloaded:
            log.info("{count} preloaded signing certificates", count=len(self._preloaded))
        for name, certificate in sorted(self._preloaded.items()):
            if clock.seconds() >= certificate.not_valid_after_utc.timestamp():
                log.warn(
                    "preloaded signing certificate {name} expired on {expired}: messages naming it will be refused",
                    name=name,
                    expired=certificate.not_valid_after_utc.isoformat(),
                )
        # url -> (certificate, expires_at); most recently used last
        self._cache: OrderedDict[str, tuple[x509.Certificate, float]] = OrderedDict()
        # url -> (error, until): recently failed downloads; oldest first
        self._failed: OrderedDict[str, tuple[TrustError, float]] = OrderedDict()
        # url -> callers waiting on the one download in flight
        self._waiting: dict[str, list[Deferred[x509.Certificate]]] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def cached(self, url: str) -> x509.Certificate | None:
        """The certificate at ``url`` if it is cached and unexpired (counted as a hit), else None.

        The synchronous path for nearly every message: no Deferred, no request.  The caller
        must have checked ``url`` against the host rule, as :meth:`fetch` does.
        """
        entry = self._cache.get(url)
        if entry is None:
            return None
        if self._clock.seconds() >= entry[1]:
            del self._cache[url]  # expired: the next fetch downloads it again
            return None
        self._cache.move_to_end(url)
        metrics.cert_cache("hit").inc()
        return entry[0]

    def fetch(self, url: str, region: str | None = None) -> Deferred[x509.Certificate]:
        """The checked certificate at ``url``; fails with :class:`TrustError`.

        ``region`` (the signed TopicArn's) tightens the host re-check; without it any SNS
        region's host is accepted here, the verifier having already matched the region.
        """
        try:
            self._host_trust.check_cert_url(url, region)
        except TrustError as e:
            return fail(e)
        certificate = self.cached(url)
        if certificate is not None:
            return succeed(certificate)
        preloaded = self._preloaded.get(url.rpartition("/")[2])
        if preloaded is not None:
            metrics.cert_cache("preloaded").inc()
            try:
                return succeed(self._check_and_cache(preloaded, url))
            except TrustError as e:
                return fail(e)
        failed = self._failed.get(url)
        if failed is not None:
            if self._clock.seconds() < failed[1]:
                metrics.cert_cache("failed").inc()
                return fail(failed[0])
            del self._failed[url]
        waiter: Deferred[x509.Certificate] = Deferred()
        if url in self._waiting:
            # Another message already asked for this URL: wait for its download.
            metrics.cert_cache("hit").inc()
            self._waiting[url].append(waiter)
            return waiter
        metrics.cert_cache("miss").inc()
        self._waiting[url] = [waiter]
        download = ensureDeferred(get_bounded(self._http, url, self.max_bytes, "certificate"))
        download.addTimeout(self.timeout, self._clock)
        download.addCallback(_parse_pem)
        download.addCallback(self._check_and_cache, url)
        download.addBoth(self._deliver, url)
        return waiter

    def _check_and_cache(self, certificate: x509.Certificate, url: str) -> x509.Certificate:
        now = self._clock.seconds()
        check_certificate(certificate, now, require_sns_cn=not self._host_trust.is_trusted_host(url))
        expires_at = min(now + self.max_ttl, certificate.not_valid_after_utc.timestamp())
        self._cache[url] = (certificate, expires_at)
        self._cache.move_to_end(url)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        log.info(
            "cached signing certificate {url} until {expires}",
            url=url,
            expires=datetime.fromtimestamp(expires_at, UTC).isoformat(),
        )
        return certificate

    def _deliver(self, result: x509.Certificate | Failure, url: str) -> None:
        waiters = self._waiting.pop(url, [])
        if isinstance(result, Failure):
            if result.check(TrustError):
                error = result.value
            else:
                log.warn(
                    "could not fetch signing certificate {url}: {error}",
                    url=url,
                    error=result.getErrorMessage() or result.type.__name__,
                )
                error = TrustError(502, "cert_fetch_failed", result.getErrorMessage() or result.type.__name__)
            self._failed[url] = (error, self._clock.seconds() + self.failure_ttl)
            while len(self._failed) > self.max_entries:
                self._failed.popitem(last=False)
            for waiter in waiters:
                waiter.errback(Failure(error))
        else:
            for waiter in waiters:
                waiter.callback(result)


def _parse_pem(body: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(body)
    except ValueError:
        raise FetchFailed("body is not a PEM certificate") from None
