"""Which URLs snsd may fetch: the rule shared by ``SigningCertURL`` and ``SubscribeURL``.

A URL is trusted when it is either

* an **AWS SNS URL**: ``https``, no explicit port, host exactly ``sns.<region>.amazonaws.com``
  (or ``.amazonaws.com.cn``) where ``<region>`` is the region of the signed ``TopicArn``; or
* on a **trusted emulator host** (``--trusted-host``, e.g. ``127.0.0.1:4566`` for LocalStack):
  ``http`` or ``https``, region rule waived (and, in :mod:`snsd.trust.certs`, the certificate
  CN rule too).

For certificate URLs the file name must be ``SimpleNotificationService-<id>.pem`` on either kind
of host, and there may be no query or fragment.

Parsing is deliberately strict, because a lenient parser is how look-alikes get through: the
URL must be printable ASCII without backslashes, the scheme and host lowercase, no userinfo
(``https://sns.us-east-1.amazonaws.com@evil.example/`` is refused outright), no trailing dot on
the host, and the host compared as a whole (never ``endswith``/``in``).  SNS itself never sends
URLs that need any of that leniency.

A trusted host given **without a port** matches only the scheme's default port (80 for http,
443 for https): trusting ``localhost`` must not trust every service on it.  Give the port
(``localhost:4566``) to trust an emulator on another port.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from snsd.trust.errors import TrustError

_DEFAULT_PORTS = {"http": 80, "https": 443}
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")
_REGION = re.compile(r"[a-z0-9-]+")
_HOST_CHARS = re.compile(r"[a-z0-9.-]+|\[[0-9a-f:.]+\]")
_PORT = re.compile(r"[0-9]{1,5}")
_PASSED_MAX = 256  # distinct certificate URLs remembered as checked
CERT_FILE_NAME = re.compile(r"SimpleNotificationService-[A-Za-z0-9_-]+\.pem")


@dataclass(frozen=True)
class _Authority:
    scheme: str
    host: str
    port: int | None  # as written in the URL; None when absent


class _Refused(ValueError):
    pass


def _split_authority(netloc: str) -> tuple[str, int | None]:
    """``host[:port]`` -> (host, port); strict: lowercase host, no userinfo, no trailing dot."""
    if "@" in netloc:
        raise _Refused("userinfo in URL")
    if netloc.startswith("["):
        host, bracket, rest = netloc.partition("]")
        host += bracket
    else:
        host, colon, port_text = netloc.partition(":")
        rest = colon + port_text
    if not _HOST_CHARS.fullmatch(host):
        raise _Refused("host is not a lowercase hostname or address")
    if host.endswith(".") or host.startswith(".") or ".." in host:
        raise _Refused("malformed host")
    port = None
    if rest:
        if not rest.startswith(":") or not _PORT.fullmatch(rest[1:]):
            raise _Refused("malformed port")
        port = int(rest[1:])
        if not 0 < port < 65536:
            raise _Refused("port out of range")
    return host, port


def _parse(url: object) -> tuple[_Authority, str, str, str]:
    """Split a URL into (authority, path, query, fragment) or raise :class:`_Refused`."""
    if not isinstance(url, str) or not _PRINTABLE_ASCII.fullmatch(url) or "\\" in url:
        raise _Refused("URL is not printable ASCII")
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in _DEFAULT_PORTS:
        raise _Refused("scheme must be lowercase http or https")
    parts = urlsplit(url)
    host, port = _split_authority(parts.netloc)
    return _Authority(scheme, host, port), parts.path, parts.query, parts.fragment


class HostTrust:
    """The URL trust rule; ``trusted_hosts`` are emulator ``host[:port]`` entries."""

    def __init__(self, trusted_hosts: Iterable[str] = ()) -> None:
        entries: set[tuple[str, int | None]] = set()
        for entry in trusted_hosts:
            entry = entry.strip().lower()
            if not entry:
                continue
            try:
                entries.add(_split_authority(entry))
            except _Refused as e:
                raise ValueError(f"bad trusted host {entry!r}: {e}") from None
        self._trusted = frozenset(entries)
        # (url, region) pairs that passed check_cert_url.  The rule never changes after
        # construction, and every message of a topic names the same URL: parse it once.
        self._passed: OrderedDict[tuple[str, str | None], None] = OrderedDict()

    @property
    def trusted_hosts(self) -> tuple[str, ...]:
        """The emulator hosts, normalised and sorted, for the startup log."""
        return tuple(sorted(host if port is None else f"{host}:{port}" for host, port in self._trusted))

    def _on_trusted_host(self, authority: _Authority) -> bool:
        default = _DEFAULT_PORTS[authority.scheme]
        port = default if authority.port is None else authority.port
        if (authority.host, port) in self._trusted:
            return True
        return port == default and (authority.host, None) in self._trusted

    def is_trusted_host(self, url: str) -> bool:
        """True if ``url`` is on a trusted emulator host (where the CN rule is waived)."""
        try:
            authority, _, _, _ = _parse(url)
        except _Refused:
            return False
        return self._on_trusted_host(authority)

    def _check(self, url: str, region: str | None) -> tuple[str, str, str]:
        authority, path, query, fragment = _parse(url)
        if fragment:
            raise _Refused("URL has a fragment")
        if self._on_trusted_host(authority):
            return path, query, fragment
        if authority.scheme != "https":
            raise _Refused("AWS URL is not https")
        if authority.port is not None:
            raise _Refused("AWS URL has an explicit port")
        if region is not None and not _REGION.fullmatch(region):
            raise _Refused("TopicArn region is malformed")
        region_pattern = re.escape(region) if region is not None else _REGION.pattern
        if not re.fullmatch(rf"sns\.{region_pattern}\.amazonaws\.com(\.cn)?", authority.host):
            raise _Refused("host is not the SNS endpoint of the topic's region")
        return path, query, fragment

    def check_cert_url(self, url: str, region: str | None) -> None:
        """Refuse (403 ``untrusted_cert_url``) a ``SigningCertURL`` snsd must not fetch.

        ``region`` is the signed TopicArn's region; ``None`` accepts any region (only for
        defence-in-depth re-checks by callers that have no TopicArn at hand).
        """
        if isinstance(url, str) and (url, region) in self._passed:
            return
        try:
            path, query, _ = self._check(url, region)
            if query:
                raise _Refused("certificate URL has a query")
            segments = path.split("/")
            if not CERT_FILE_NAME.fullmatch(segments[-1]) or any(s in (".", "..") for s in segments):
                raise _Refused("file name is not SimpleNotificationService-*.pem")
        except _Refused as e:
            raise TrustError(403, "untrusted_cert_url", f"{e}: {str(url)[:200]}") from None
        self._passed[(url, region)] = None
        if len(self._passed) > _PASSED_MAX:
            self._passed.popitem(last=False)

    def check_subscribe_url(self, url: str, region: str | None) -> None:
        """Refuse (403 ``untrusted_subscribe_url``) a ``SubscribeURL`` snsd must not request."""
        try:
            self._check(url, region)
        except _Refused as e:
            raise TrustError(403, "untrusted_subscribe_url", f"{e}: {str(url)[:200]}") from None
