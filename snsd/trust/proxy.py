"""Outbound HTTPS through the proxy named by ``HTTPS_PROXY``, as curl and the AWS SDKs do.

snsd requests two kinds of URL: signing certificates and SubscribeURLs, both on
``sns.<region>.amazonaws.com`` over https.  In a network whose only way out is a proxy, those
requests must ask the proxy for a tunnel (``CONNECT host:443``) and speak TLS to AWS through it,
verifying AWS's certificate as a direct request would.

Twisted's ``ProxyAgent`` does not do this: it sends ``GET https://…`` to the proxy (the form for
plain http), and its source says CONNECT support is still to come.  So this module adds the one
missing piece, an endpoint that opens the tunnel and then starts TLS on it, and hands the rest to
Twisted's ``Agent.usingEndpointFactory``: connection pooling, timeouts and HTTP stay Twisted's.

* ``HTTPS_PROXY`` (or ``https_proxy``, which wins): ``http://[user:password@]host[:port]``; the
  port defaults to 80; credentials go in ``Proxy-Authorization: Basic``.  A TLS connection *to*
  the proxy (``https://`` proxy URL) is not supported and refused at startup.
* ``NO_PROXY`` (or ``no_proxy``): hosts reached directly, with Python's ``urllib`` rules (comma
  separated suffixes, ``*`` for all).
* plain ``http`` URLs (only trusted emulator hosts, e.g. LocalStack) are always reached directly.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit
from urllib.request import proxy_bypass_environment

import treq
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Factory, Protocol
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from snsd.logs import Logger

log = Logger()

# A proxy's answer to CONNECT is a status line and a few headers.
_MAX_PROXY_ANSWER = 16384


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    authorization: bytes | None  # the Proxy-Authorization value, when the URL carries credentials
    bypass: str  # NO_PROXY, as given

    def describe(self) -> str:
        return f"{self.host}:{self.port}" + (" (with credentials)" if self.authorization else "")

    def applies_to(self, host: str) -> bool:
        return not (self.bypass and proxy_bypass_environment(host, {"no": self.bypass}))


def _variable(environ: Mapping[str, str], name: str) -> str:
    # Lowercase first, as curl and urllib do.
    return (environ.get(name.lower()) or environ.get(name.upper()) or "").strip()


def proxy_from_environment(environ: Mapping[str, str]) -> Proxy | None:
    """The HTTPS proxy the environment names, or None; ``ValueError`` (one line) if unusable."""
    url = _variable(environ, "https_proxy")
    if not url:
        return None
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"HTTPS_PROXY {url!r}: only http:// proxies are supported (CONNECT over plain TCP)")
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"HTTPS_PROXY {url!r}: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"HTTPS_PROXY {url!r}: no host")
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = b"Basic " + base64.b64encode(credentials)
    return Proxy(parts.hostname, port, authorization, _variable(environ, "no_proxy"))


class _Tunnel(Protocol):
    """Asks the proxy for a tunnel; once it answers 200, starts TLS and becomes a relay for the
    protocol the agent wanted (which then owns the transport)."""

    def __init__(self, request: bytes, tls, factory: Factory):
        self._request = request
        self._tls = tls
        self._factory = factory
        self._buffer = b""
        self._inner: Protocol | None = None
        self.established: Deferred[Protocol] = Deferred(lambda _: self.transport.abortConnection())

    def connectionMade(self) -> None:
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)
            return
        self._buffer += data
        head, end, rest = self._buffer.partition(b"\r\n\r\n")
        if not end:
            if len(self._buffer) > _MAX_PROXY_ANSWER:
                self._refuse("the proxy's answer to CONNECT is too long")
            return
        status = head.split(b"\r\n", 1)[0]
        words = status.split(b" ", 2)
        if len(words) < 2 or not words[0].startswith(b"HTTP/1.") or words[1] != b"200":
            self._refuse(f"the proxy refused CONNECT: {status[:200].decode('latin-1')}")
            return
        if rest:  # the server cannot speak before our TLS ClientHello
            self._refuse("the proxy sent data after its answer to CONNECT")
            return
        self.transport.startTLS(self._tls)
        self._inner = self._factory.buildProtocol(self.transport.getPeer())
        self._inner.makeConnection(self.transport)
        self.established.callback(self._inner)

    def _refuse(self, why: str) -> None:
        self.transport.abortConnection()
        if not self.established.called:
            self.established.errback(ConnectError(string=why))

    def connectionLost(self, reason) -> None:
        if self._inner is not None:
            self._inner.connectionLost(reason)
        elif not self.established.called:
            self.established.errback(reason)


class TunnelEndpoint:
    """An ``IStreamClientEndpoint``: TCP to the proxy, ``CONNECT host:port``, then TLS to host."""

    def __init__(self, proxy_endpoint, proxy: Proxy, host: str, port: int, tls):
        self._proxy_endpoint = proxy_endpoint
        self._tls = tls
        target = f"{host}:{port}".encode("ascii")
        headers = [b"CONNECT " + target + b" HTTP/1.1", b"Host: " + target]
        if proxy.authorization:
            headers.append(b"Proxy-Authorization: " + proxy.authorization)
        self._request = b"\r\n".join(headers) + b"\r\n\r\n"

    def connect(self, protocol_factory: Factory) -> Deferred[Protocol]:
        tunnel_factory = Factory.forProtocol(lambda: _Tunnel(self._request, self._tls, protocol_factory))
        return self._proxy_endpoint.connect(tunnel_factory).addCallback(lambda tunnel: tunnel.established)


@implementer(IAgentEndpointFactory)
class ProxyEndpoints:
    """The agent's endpoints: a :class:`TunnelEndpoint` for https hosts the proxy applies to,
    a direct connection (TLS for https) for the rest."""

    def __init__(self, reactor, proxy: Proxy | None, connect_timeout: float = 10.0, tls_policy=None):
        self._reactor = reactor
        self._proxy = proxy
        self._timeout = connect_timeout
        # treq's default: the system's roots, the hostname checked.
        self._policy = tls_policy or BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri):
        host = uri.host.decode("ascii")
        tls = self._policy.creatorForNetloc(uri.host, uri.port) if uri.scheme == b"https" else None
        if tls is not None and self._proxy is not None and self._proxy.applies_to(host):
            to_proxy = HostnameEndpoint(self._reactor, self._proxy.host, self._proxy.port, timeout=self._timeout)
            return TunnelEndpoint(to_proxy, self._proxy, host, uri.port, tls)
        direct = HostnameEndpoint(self._reactor, uri.host, uri.port, timeout=self._timeout)
        return direct if tls is None else wrapClientTLS(tls, direct)


def make_http_client(reactor, environ: Mapping[str, str], tls_policy=None):
    """The treq client for certificate downloads and subscription confirmations: direct, or
    through ``HTTPS_PROXY`` when the environment names one."""
    proxy = proxy_from_environment(environ)
    if proxy is None and tls_policy is None:
        return treq
    if proxy is not None:
        log.info(
            "certificate downloads and subscription confirmations go through the proxy {proxy}"
            " (not for NO_PROXY hosts: {bypass})",
            proxy=proxy.describe(),
            bypass=proxy.bypass or "none",
        )
    endpoints = ProxyEndpoints(reactor, proxy, tls_policy=tls_policy)
    return HTTPClient(Agent.usingEndpointFactory(reactor, endpoints, HTTPConnectionPool(reactor)))
