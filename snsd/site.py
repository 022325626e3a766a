"""The HTTP server around the endpoint's resource: the Site, its channel and its request class.

How bytes become requests (body limits, per-connection caches, no access log) lives here; what a
request means lives in :mod:`snsd.web`.
"""

from __future__ import annotations

import json
from io import BytesIO

import orjson
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from snsd import metrics
from snsd.logs import Logger
from snsd.web import DEFAULT_MAX_BODY

log = Logger()


class LimitedRequest(Request):
    """A request that never buffers more than ``max_body`` bytes of body.

    A declared Content-Length over the limit is answered 413 at once and the connection
    closed; a chunked body that grows past it is discarded as it arrives.
    """

    max_body = DEFAULT_MAX_BODY
    body_too_large = False

    def gotLength(self, length):
        if length is not None and length > self.max_body:
            self.body_too_large = True
            body = json.dumps({"error": f"body larger than {self.max_body} bytes"}).encode()
            transport = self.channel.transport
            transport.write(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\nConnection: close\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            metrics.requests("unknown", 413).inc()
            log.info("refused 413 declared length {length}", length=length)
            transport.loseConnection()
            # HTTPChannel.allHeadersReceived answers "Expect: 100-continue" right after this
            # call; a 100 Continue after the final 413 would invite the body just refused.
            self.requestHeaders.removeHeader(b"Expect")
            Request.gotLength(self, 0)
            return
        Request.gotLength(self, length)

    def handleContentChunk(self, data):
        if self.body_too_large:
            return
        if self.content.tell() + len(data) > self.max_body:
            self.body_too_large = True
            self.content = BytesIO()
            return
        Request.handleContentChunk(self, data)


class Connections:
    """The open connections of one Site: a cap in total and per peer, and a deadline per request.

    Twisted's idle timeout restarts on every byte, so a client sending a byte a second keeps its
    connection, and a file descriptor, for as long as it likes.  Here a request must arrive whole
    (headers and body) within ``deadline`` seconds of its first byte (of the connection's opening,
    for the first request), or the client gets 408 and the connection is closed.  :meth:`sweep`,
    called every ``SWEEP_INTERVAL`` seconds by the daemon's ``deadlines`` TimerService, finds the
    late ones, so a request costs no timer of its own.

    At ``max_total`` open connections a new one takes the place of the connection that has been
    receiving its request the longest (else of the longest-idle keep-alive connection; never of one
    whose request is being answered): slow or silent clients cannot lock out the health check and
    SNS, whose requests arrive at once.  If every connection is being answered, the new one is
    closed.  ``max_per_peer`` (0: no cap) bounds one client address; behind a load balancer every
    connection comes from the balancer, so it is off by default.
    """

    SWEEP_INTERVAL = 1.0

    def __init__(self, clock, *, deadline: float, max_total: int, max_per_peer: int = 0):
        self.clock = clock
        self.deadline = deadline
        self.max_total = max_total
        self.max_per_peer = max_per_peer
        self.open = 0
        self._per_peer: dict[str, int] = {}
        # Connections waiting for (the rest of) a request -> when its wait began, oldest first.
        self.receiving: dict[SNSChannel, float] = {}
        # Keep-alive connections between requests, the longest-idle first.
        self.idle: dict[SNSChannel, None] = {}

    # -- the Site's hooks ----------------------------------------------------------------------

    def admit(self, peer: str) -> bool:
        """Room for one more connection from ``peer``?  At the cap, makes room if it can."""
        if self.max_per_peer and self._per_peer.get(peer, 0) >= self.max_per_peer:
            metrics.connections_refused("peer_cap").inc()
            return False
        if self.open >= self.max_total:
            waiting = self.receiving or self.idle
            if not waiting:
                metrics.connections_refused("all_busy").inc()
                return False
            metrics.connections_refused("made_room").inc()
            next(iter(waiting)).drop()
        return True

    def sweep(self) -> None:
        """Answer 408 to every connection whose request has not arrived within the deadline."""
        late_since = self.clock.seconds() - self.deadline
        for channel, since in list(self.receiving.items()):
            if since > late_since:
                break  # the rest began later
            channel.too_slow()

    # -- the channels' hooks -------------------------------------------------------------------

    def opened(self, channel: SNSChannel) -> None:
        self.open += 1
        self._per_peer[channel.peer] = self._per_peer.get(channel.peer, 0) + 1
        self.receiving[channel] = self.clock.seconds()

    def closed(self, channel: SNSChannel) -> None:
        self.receiving.pop(channel, None)
        self.idle.pop(channel, None)
        self.open -= 1
        left = self._per_peer[channel.peer] - 1
        if left:
            self._per_peer[channel.peer] = left
        else:
            del self._per_peer[channel.peer]


_RECEIVING, _ANSWERING, _IDLE, _CLOSED = range(4)


class SNSChannel(HTTPChannel):
    """HTTP/1.1 that remembers what a connection cannot change, and counts itself in :class:`Connections`.

    Twisted asks for the local address on every request (a getsockname system call), and Klein
    asks twice per request whether the transport is TLS (a zope adapter lookup each time).
    Plain HTTPChannel, not Twisted's HTTP/2-negotiating wrapper: SNS speaks HTTP/1.1.
    """

    _host = None
    _secure = None
    connections: Connections | None = None  # set by the Site
    peer = ""
    _state = _CLOSED

    def getHost(self):
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def isSecure(self):
        if self._secure is None:
            self._secure = super().isSecure()
        return self._secure

    def connectionMade(self):
        super().connectionMade()
        if self.connections is not None:
            self._state = _RECEIVING
            self.connections.opened(self)

    # The three hooks below run once per request: plain calls and dict operations inline (the
    # request path is what bench/ab.py measures).

    def dataReceived(self, data):
        if self._state == _IDLE:  # the first byte of the next request: its deadline starts
            self._state = _RECEIVING
            connections = self.connections
            del connections.idle[self]
            connections.receiving[self] = connections.clock.seconds()
        HTTPChannel.dataReceived(self, data)

    def allContentReceived(self):
        if self._state == _RECEIVING:
            self._state = _ANSWERING
            self.connections.receiving.pop(self, None)
        HTTPChannel.allContentReceived(self)

    def requestDone(self, request):
        # Before Twisted's own: it may go on at once to a pipelined request already buffered.
        if self._state == _ANSWERING:
            self._state = _IDLE
            self.connections.idle[self] = None
        HTTPChannel.requestDone(self, request)

    def connectionLost(self, reason):
        if self._state != _CLOSED:
            self._state = _CLOSED
            self.connections.closed(self)
        super().connectionLost(reason)

    def too_slow(self) -> None:
        """The request did not arrive within the deadline: 408, and close (nothing is being answered)."""
        deadline = self.connections.deadline
        self._leave()
        body = orjson.dumps({"error": f"request not received within {deadline:g} s"})
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        metrics.requests("unknown", 408).inc()
        log.info("refused {status} {reason}", status=408, reason="request too slow", peer=self.peer)
        # Twisted's idle-timeout path: close once the answer is written, abort if the client never reads it.
        self.timeoutConnection()

    def drop(self) -> None:
        """Closed at once to make room for a new connection (see :class:`Connections`)."""
        self._leave()
        log.debug("closed a waiting connection from {peer} to make room", peer=self.peer)
        self.transport.abortConnection()

    def _leave(self) -> None:
        # Counted out now: the descriptor is freed within a reactor turn, and room is needed now.
        if self._state != _CLOSED:
            self._state = _CLOSED
            self.connections.closed(self)


class QuietSite(Site):
    """No access-log line per request: under a burst it would be one line per message. Requests are
    counted in /metrics and tallied in the periodic activity line instead.

    With ``connections`` set, it caps open connections and gives each request a deadline."""

    protocol = SNSChannel
    connections: Connections | None = None

    def log(self, request):
        pass

    def buildProtocol(self, addr):
        peer = getattr(addr, "host", str(addr))
        if self.connections is not None and not self.connections.admit(peer):
            return None  # the port closes the socket at once
        channel = super().buildProtocol(addr)
        channel.connections = self.connections
        channel.peer = peer
        return channel


def make_site(resource, max_body: int = DEFAULT_MAX_BODY, connections: Connections | None = None, clock=None) -> Site:
    """The Site for ``resource``; ``connections`` caps its connections (``clock``: its reactor, for tests)."""
    request_factory = type("SNSDRequest", (LimitedRequest,), {"max_body": max_body})
    # SNS posts JSON as text/plain: never a form.  Twisted would otherwise parse every POST's
    # Content-Type with the email package, which costs more than verifying the signature.
    site = QuietSite(resource, requestFactory=request_factory, parsePOSTFormSubmission=False, reactor=clock)
    site.connections = connections
    site.displayTracebacks = False
    site.noisy = False
    return site
