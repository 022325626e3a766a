"""Certificate downloads through HTTPS_PROXY: a real CONNECT tunnel on loopback, TLS verified through it."""

from __future__ import annotations

import base64
import datetime
import ipaddress

import pytest
import pytest_twisted
import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from treq.client import HTTPClient
from twisted.internet import defer, protocol, reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectError, ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from snsd.trust.proxy import Proxy, ProxyEndpoints, _Tunnel, make_http_client, proxy_from_environment
from tests.trust_helpers import certificate_pem, private_key_pem, rsa_key

# -- the environment ------------------------------------------------------------------------------


def test_no_proxy_variable_means_direct_requests():
    assert proxy_from_environment({}) is None
    assert make_http_client(reactor, {}) is treq


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"HTTPS_PROXY": "http://proxy.internal:3128"}, Proxy("proxy.internal", 3128, None, "")),
        ({"HTTPS_PROXY": "proxy.internal:3128"}, Proxy("proxy.internal", 3128, None, "")),
        ({"https_proxy": "http://proxy.internal"}, Proxy("proxy.internal", 80, None, "")),
        ({"https_proxy": "http://a:1", "HTTPS_PROXY": "http://b:2"}, Proxy("a", 1, None, "")),
        (
            {"HTTPS_PROXY": "http://us%40er:p%3Ass@proxy:8080", "NO_PROXY": ".internal"},
            Proxy("proxy", 8080, b"Basic " + base64.b64encode(b"us@er:p:ss"), ".internal"),
        ),
    ],
)
def test_the_proxy_comes_from_https_proxy(environ, expected):
    assert proxy_from_environment(environ) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://proxy:3128", "only http:// proxies"),
        ("socks5://proxy:1080", "only http:// proxies"),
        ("http://proxy:port", "port is not a number"),
        ("http://proxy:70000", "port is not a number"),
        ("http://:3128", "no host"),
    ],
)
def test_an_unusable_proxy_is_refused_with_one_line(url, message):
    with pytest.raises(ValueError, match=message):
        proxy_from_environment({"HTTPS_PROXY": url})


def test_no_proxy_hosts_are_reached_directly():
    proxy = Proxy("proxy", 3128, None, "localhost,.internal")
    assert proxy.applies_to("sns.us-east-1.amazonaws.com")
    assert not proxy.applies_to("localhost")
    assert not proxy.applies_to("cert.internal")
    assert not Proxy("proxy", 3128, None, "*").applies_to("sns.us-east-1.amazonaws.com")


# -- a real tunnel on loopback --------------------------------------------------------------------


def _server_certificate():
    key = rsa_key("tls-server")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return ssl.PrivateCertificate.loadPEM(private_key_pem(key) + certificate_pem(cert)), certificate_pem(cert)


class _Relay(protocol.Protocol):
    def __init__(self, peer):
        self.peer = peer

    def connectionMade(self):
        self.peer.relay = self
        self.peer.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.peer.transport.resumeProducing()

    def dataReceived(self, data):
        self.peer.transport.write(data)

    def connectionLost(self, reason):
        self.peer.transport.loseConnection()


class _ConnectProxy(protocol.Protocol):
    """A minimal CONNECT proxy: records the request head, then relays bytes to the server."""

    def __init__(self, server_port, log, answer):
        self.server_port, self.log, self.answer = server_port, log, answer
        self.buffer, self.relay = b"", None

    def dataReceived(self, data):
        if self.relay is not None:
            self.relay.transport.write(data)
            return
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        head, _, _ = self.buffer.partition(b"\r\n\r\n")
        self.log.append(head)
        if self.answer is not None:
            self.transport.write(self.answer)
            self.transport.loseConnection()
            return
        self.transport.pauseProducing()
        to_server = TCP4ClientEndpoint(reactor, "127.0.0.1", self.server_port)
        to_server.connect(protocol.Factory.forProtocol(lambda: _Relay(self)))

    def connectionLost(self, reason):
        if self.relay is not None:
            self.relay.transport.loseConnection()


class _Pem(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"-----BEGIN CERTIFICATE-----\n"


@pytest.fixture
def servers():
    started = []

    @defer.inlineCallbacks
    def start(proxy_answer=None):
        server_cert, server_pem = _server_certificate()
        tls_server = yield ssl_listen(server_cert)
        started.append(tls_server)
        log = []
        tls_port = tls_server.getHost().port
        proxy = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(lambda: _ConnectProxy(tls_port, log, proxy_answer))
        )
        started.append(proxy)
        policy = BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(server_pem))
        return tls_port, proxy.getHost().port, log, policy

    def ssl_listen(server_cert):
        from twisted.internet.endpoints import SSL4ServerEndpoint

        return SSL4ServerEndpoint(reactor, 0, server_cert.options(), interface="127.0.0.1").listen(Site(_Pem()))

    yield start
    for port in started:
        port.stopListening()


def _client(proxy, policy):
    pool = HTTPConnectionPool(reactor, persistent=False)
    return HTTPClient(Agent.usingEndpointFactory(reactor, ProxyEndpoints(reactor, proxy, tls_policy=policy), pool))


@pytest_twisted.ensureDeferred
async def test_https_goes_through_a_connect_tunnel_and_tls_is_verified_end_to_end(servers):
    tls_port, proxy_port, log, policy = await servers()
    client = _client(Proxy("127.0.0.1", proxy_port, b"Basic dTpw", ""), policy)
    response = await client.get(f"https://localhost:{tls_port}/SimpleNotificationService-x.pem")
    assert (response.code, await response.content()) == (200, b"-----BEGIN CERTIFICATE-----\n")
    target = f"localhost:{tls_port}"
    assert log == [f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic dTpw".encode()]


@pytest_twisted.ensureDeferred
async def test_the_tunnel_does_not_weaken_tls_verification(servers):
    tls_port, proxy_port, log, _ = await servers()
    client = _client(Proxy("127.0.0.1", proxy_port, None, ""), None)  # the system's roots only
    with pytest.raises(Exception) as e:
        await client.get(f"https://localhost:{tls_port}/x")
    assert "certificate verify failed" in repr(e.value) or "SSL" in repr(e.value)
    assert len(log) == 1


@pytest_twisted.ensureDeferred
async def test_a_proxy_refusing_connect_fails_the_request(servers):
    tls_port, proxy_port, log, policy = await servers(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
    client = _client(Proxy("127.0.0.1", proxy_port, None, ""), policy)
    with pytest.raises(ConnectError, match="the proxy refused CONNECT: HTTP/1.1 407"):
        await client.get(f"https://localhost:{tls_port}/x")


@pytest_twisted.ensureDeferred
async def test_no_proxy_hosts_are_connected_to_directly(servers):
    tls_port, proxy_port, log, policy = await servers()
    client = _client(Proxy("127.0.0.1", proxy_port, None, "localhost"), policy)
    response = await client.get(f"https://localhost:{tls_port}/x")
    assert response.code == 200
    await response.content()
    assert log == []


# -- the tunnel protocol, byte by byte (pinned by mutation testing) ---------------------------------


class _TLSStringTransport(StringTransport):
    def __init__(self):
        super().__init__()
        self.tls_started = []

    def startTLS(self, options):
        self.tls_started.append(options)


class _Inner(protocol.Protocol):
    def __init__(self):
        self.received, self.lost = [], []

    def dataReceived(self, data):
        self.received.append(data)

    def connectionLost(self, reason):
        self.lost.append(reason)


def _tunnel():
    tls = object()
    tunnel = _Tunnel(b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", tls, protocol.Factory.forProtocol(_Inner))
    transport = _TLSStringTransport()
    tunnel.makeConnection(transport)
    outcome = []
    tunnel.established.addBoth(outcome.append)
    return tunnel, transport, tls, outcome


def test_the_tunnel_asks_for_connect_then_waits_for_the_whole_answer():
    tunnel, transport, tls, outcome = _tunnel()
    assert transport.value() == b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n"
    tunnel.dataReceived(b"HTTP/1.1 200 Connection established\r\n")
    assert outcome == [] and transport.tls_started == []
    tunnel.dataReceived(b"Via: proxy\r\n\r\n")
    [inner] = outcome
    assert isinstance(inner, _Inner) and inner.transport is transport
    assert transport.tls_started == [tls]


@pytest.mark.parametrize("status", [b"HTTP/1.1 200", b"HTTP/1.0 200 OK"])
def test_a_200_status_line_in_any_http_1_form_opens_the_tunnel(status):
    tunnel, transport, tls, outcome = _tunnel()
    tunnel.dataReceived(status + b"\r\n\r\n")
    assert isinstance(outcome[0], _Inner)


def test_after_the_tunnel_opens_bytes_go_to_the_inner_protocol_only():
    tunnel, transport, tls, outcome = _tunnel()
    tunnel.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
    tunnel.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")  # bytes from the server now, not the proxy
    assert outcome[0].received == [b"HTTP/1.1 200 OK\r\n\r\n"]
    assert transport.tls_started == [tls]
    assert not transport.disconnected
    tunnel.connectionLost(Failure(ConnectionDone()))
    assert len(outcome[0].lost) == 1


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", "the proxy refused CONNECT: HTTP/1.1 407"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "refused CONNECT"),
        (b"HTTP/2 200\r\n\r\n", "refused CONNECT"),
        (b"200 OK\r\n\r\n", "refused CONNECT"),
        (b"HTTP/1.1\r\n\r\n", "refused CONNECT"),
        (b"HTTP/1.1 200 OK\r\n\r\n\x16\x03", "the proxy sent data after its answer to CONNECT"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 3000, "the proxy's answer to CONNECT is too long"),
    ],
)
def test_anything_but_a_clean_200_fails_the_connection(answer, why):
    tunnel, transport, tls, outcome = _tunnel()
    tunnel.dataReceived(answer)
    [failure] = outcome
    assert failure.check(ConnectError) and why in str(failure.value)
    assert transport.disconnected  # aborted
    assert transport.tls_started == []
    tunnel.connectionLost(Failure(ConnectionDone()))  # and the loss that follows changes nothing


def test_an_answer_of_16384_bytes_is_still_waited_for():
    tunnel, transport, tls, outcome = _tunnel()
    head = b"HTTP/1.1 200 OK\r\nX: "
    tunnel.dataReceived(head + b"y" * (16384 - len(head)))
    assert (len(tunnel._buffer), outcome) == (16384, [])
    tunnel.dataReceived(b"\r\n\r\n")
    assert isinstance(outcome[0], _Inner)


def test_a_connection_lost_before_the_answer_fails_the_tunnel():
    tunnel, transport, tls, outcome = _tunnel()
    tunnel.connectionLost(Failure(ConnectionDone()))
    assert outcome[0].check(ConnectionDone)


def test_cancelling_aborts_the_connection_to_the_proxy():
    tunnel, transport, tls, outcome = _tunnel()
    tunnel.established.cancel()
    assert transport.disconnected


def test_the_proxy_is_described_without_its_credentials():
    assert Proxy("proxy", 3128, None, "").describe() == "proxy:3128"
    assert Proxy("proxy", 3128, b"Basic x", "").describe() == "proxy:3128 (with credentials)"


def test_a_client_with_its_own_tls_policy_is_built_even_without_a_proxy():
    client = make_http_client(reactor, {}, tls_policy=BrowserLikePolicyForHTTPS())
    assert isinstance(client, HTTPClient)
    assert isinstance(make_http_client(reactor, {"HTTPS_PROXY": "http://p:1"}), HTTPClient)


def test_connections_time_out_after_10_seconds_by_default():
    assert ProxyEndpoints(reactor, None)._timeout == 10.0


def test_the_proxy_in_use_is_logged_without_its_credentials():
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        make_http_client(reactor, {"HTTPS_PROXY": "http://u:secret@p:1", "NO_PROXY": ".internal"})
        make_http_client(reactor, {}, tls_policy=BrowserLikePolicyForHTTPS())
    finally:
        globalLogPublisher.removeObserver(events.append)
    [event] = [e for e in events if "through the proxy" in e.get("log_format", "")]
    assert (event["proxy"], event["bypass"]) == ("p:1 (with credentials)", ".internal")
    assert "secret" not in repr(event)


def test_an_answer_past_16384_bytes_without_its_end_is_refused():
    tunnel, transport, tls, outcome = _tunnel()
    tunnel.dataReceived(b"HTTP/1.1 200 OK\r\n" + b"y" * (16385 - 17))
    assert "too long" in str(outcome[0].value)


def test_a_refusing_status_line_is_quoted_up_to_200_bytes():
    tunnel, transport, tls, outcome = _tunnel()
    status = b"HTTP/1.1 407 " + b"x" * 300
    tunnel.dataReceived(status + b"\r\n\r\n")
    assert str(outcome[0].value).endswith("the proxy refused CONNECT: " + status[:200].decode() + ".")
