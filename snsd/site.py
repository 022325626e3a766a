"""The HTTP server around the endpoint's resource: the Site, its channel and its request class.

How bytes become requests (body limits, per-connection caches, no access log) lives here; what a
request means lives in :mod:`snsd.web`.
"""

from __future__ import annotations

import json
from io import BytesIO

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


class SNSChannel(HTTPChannel):
    """HTTP/1.1 that remembers what a connection cannot change.

    Twisted asks for the local address on every request (a getsockname system call), and Klein
    asks twice per request whether the transport is TLS (a zope adapter lookup each time).
    Plain HTTPChannel, not Twisted's HTTP/2-negotiating wrapper: SNS speaks HTTP/1.1.
    """

    _host = None
    _secure = None

    def getHost(self):
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def isSecure(self):
        if self._secure is None:
            self._secure = super().isSecure()
        return self._secure


class QuietSite(Site):
    """No access-log line per request: under a burst it would be one line per message. Requests are
    counted in /metrics and tallied in the periodic activity line instead."""

    protocol = SNSChannel

    def log(self, request):
        pass


def make_site(resource, max_body: int = DEFAULT_MAX_BODY) -> Site:
    request_factory = type("SNSDRequest", (LimitedRequest,), {"max_body": max_body})
    # SNS posts JSON as text/plain: never a form.  Twisted would otherwise parse every POST's
    # Content-Type with the email package, which costs more than verifying the signature.
    site = QuietSite(resource, requestFactory=request_factory, parsePOSTFormSubmission=False)
    site.displayTracebacks = False
    site.noisy = False
    return site
