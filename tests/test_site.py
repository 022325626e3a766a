"""The listening Site: one channel per connection, answering keep-alive requests in order."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from snsd.site import make_site
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
