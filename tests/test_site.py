"""The listening Site: one channel per connection, answering keep-alive requests in order."""

from __future__ import annotations

from twisted.application.internet import TimerService
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from snsd.site import Connections, make_site
from tests.web_harness import Snsd


class CountingTransport(StringTransport):
    """A connection that counts how often it is asked for its local address (a getsockname call)."""

    def __init__(self):
        super().__init__(hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        self.host_asked = 0

    def getHost(self):
        self.host_asked += 1
        return super().getHost()


def test_a_connection_asks_for_its_address_once_whatever_the_number_of_requests(tmp_path):
    site = make_site(Snsd(tmp_path).daemon.http.factory.resource)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = CountingTransport()
    channel.makeConnection(transport)
    for _ in range(3):
        channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: localhost:8080\r\n\r\n")
    responses = transport.value().split(b"HTTP/1.1 ")[1:]
    assert [r.split(b" ", 1)[0] for r in responses] == [b"200"] * 3
    assert all(b'{"status":"alive"}' in r for r in responses)
    assert transport.host_asked == 1
    channel.connectionLost(None)


def test_answers_carry_their_length_and_are_not_chunked(tmp_path):
    site = make_site(Snsd(tmp_path).daemon.http.factory.resource)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /nowhere HTTP/1.1\r\nHost: localhost:8080\r\n\r\n")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404")
    assert b"transfer-encoding" not in head.lower()
    assert f"Content-Length: {len(body)}".encode() in head
    assert body == b'{"error":"not found"}'
    channel.connectionLost(None)


def connect(site):
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
    channel.makeConnection(transport)
    return channel, transport


def test_a_declared_oversized_body_waiting_for_100_continue_gets_only_the_413(tmp_path):
    channel, transport = connect(make_site(Snsd(tmp_path).daemon.http.factory.resource))
    channel.dataReceived(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2000000\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in answer
    assert transport.disconnecting
    channel.connectionLost(None)


def test_a_body_within_the_limit_still_gets_100_continue(tmp_path):
    channel, transport = connect(make_site(Snsd(tmp_path).daemon.http.factory.resource))
    channel.dataReceived(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    transport.clear()
    channel.dataReceived(b"{}")
    assert transport.value().startswith(b"HTTP/1.1 400 ")
    channel.connectionLost(None)


# -- slow clients: a deadline per request, a cap on connections (issue 15 item 6) ----------------

HEALTH = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


class Hanging(Resource):
    """A request still being answered: what a slow job with --ack after-job looks like from the channel."""

    isLeaf = True

    def render(self, request):
        return NOT_DONE_YET


class Limited:
    """A Site with connection limits on a Clock, and the connections made to it."""

    def __init__(self, tmp_path, *, deadline=10.0, max_total=100, max_per_peer=0, resource=None):
        self.clock = Clock()
        self.connections = Connections(self.clock, deadline=deadline, max_total=max_total, max_per_peer=max_per_peer)
        resource = resource if resource is not None else Snsd(tmp_path).daemon.http.factory.resource
        self.site = make_site(resource, connections=self.connections, clock=self.clock)
        self.site.doStart()
        # As the daemon's "deadlines" TimerService does.
        self.sweeping = TimerService(Connections.SWEEP_INTERVAL, self.connections.sweep)
        self.sweeping.clock = self.clock
        self.sweeping.startService()

    def connect(self, host="127.0.0.1", port=40000):
        channel = self.site.buildProtocol(IPv4Address("TCP", host, port))
        if channel is None:
            return None, None
        transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        channel.makeConnection(transport)
        return channel, transport

    def close(self, *channels):
        for channel in channels:
            channel.connectionLost(None)
        self.sweeping.stopService()
        self.site.doStop()


def closed(transport) -> bool:
    return transport.disconnecting or transport.disconnected


def test_a_request_trickling_in_gets_408_at_the_deadline_however_often_bytes_arrive(tmp_path):
    limited = Limited(tmp_path, deadline=10)
    channel, transport = limited.connect()
    for byte in b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"{" * 100:
        channel.dataReceived(bytes([byte]))
        limited.clock.advance(0.2)  # a byte every 0.2 s: Twisted's idle timeout would never fire
        if limited.clock.seconds() >= 11:
            break
    assert transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b'{"error":"request not received within 10 s"}' in transport.value()
    assert closed(transport) and limited.connections.open == 0
    limited.close(channel)


def test_a_silent_connection_is_closed_at_the_deadline(tmp_path):
    limited = Limited(tmp_path, deadline=10)
    channel, transport = limited.connect()
    limited.clock.advance(9)
    assert not closed(transport)
    limited.clock.advance(2)
    assert transport.value().startswith(b"HTTP/1.1 408 ") and closed(transport)
    limited.close(channel)


def test_a_request_arriving_in_time_is_answered_and_keep_alive_idles_past_the_deadline(tmp_path):
    limited = Limited(tmp_path, deadline=10)
    channel, transport = limited.connect()
    limited.clock.advance(5)
    channel.dataReceived(HEALTH)
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    transport.clear()
    limited.clock.advance(30)  # idle between requests: Twisted's idle timeout's (60 s) business, not the deadline's
    assert not closed(transport) and transport.value() == b""
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\n")  # the next request's deadline starts now
    limited.clock.advance(9)
    assert not closed(transport)
    limited.clock.advance(2)
    assert transport.value().startswith(b"HTTP/1.1 408 ") and closed(transport)
    limited.close(channel)


def test_at_the_cap_a_new_connection_replaces_the_one_waiting_longest(tmp_path):
    limited = Limited(tmp_path, max_total=3)
    slow = [limited.connect(port=40000 + i) for i in range(3)]
    for channel, _ in slow:
        channel.dataReceived(b"GET /heal")
        limited.clock.advance(1)
    channel, transport = limited.connect(port=41000)
    assert channel is not None
    assert closed(slow[0][1]) and not closed(slow[1][1]) and not closed(slow[2][1])
    channel.dataReceived(HEALTH)
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    assert limited.connections.open == 3
    limited.close(channel, *(c for c, _ in slow))


def test_connections_being_answered_are_never_replaced(tmp_path):
    limited = Limited(tmp_path, max_total=2, resource=Hanging())
    busy = [limited.connect(port=40000 + i) for i in range(2)]
    for channel, _ in busy:
        channel.dataReceived(HEALTH)
    assert limited.connect(port=41000) == (None, None)
    assert not any(closed(transport) for _, transport in busy)
    limited.close(*(c for c, _ in busy))


def test_closed_connections_free_their_place(tmp_path):
    limited = Limited(tmp_path, max_total=1, resource=Hanging())
    channel, _ = limited.connect()
    channel.dataReceived(HEALTH)
    assert limited.connect(port=41000) == (None, None)
    channel.connectionLost(None)
    again, _ = limited.connect(port=41001)
    assert again is not None
    limited.close(again)


def test_a_per_peer_cap_refuses_that_peer_only(tmp_path):
    limited = Limited(tmp_path, max_per_peer=2)
    mine = [limited.connect("10.0.0.1", 40000 + i)[0] for i in range(2)]
    assert limited.connect("10.0.0.1", 40009) == (None, None)
    theirs, _ = limited.connect("10.0.0.2", 40000)
    assert theirs is not None
    limited.close(*mine, theirs)
