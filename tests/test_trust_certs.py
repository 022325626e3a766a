"""Fetching signing certificates through treq (StubTreq over a recording resource) on a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from prometheus_client import REGISTRY
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from snsd.trust.certs import CertificateStore, load_certificate_dir
from snsd.trust.errors import TrustError
from snsd.trust.hosts import HostTrust
from tests.trust_helpers import (
    CERT_URL,
    LOCALSTACK_CERT_URL,
    NOW,
    RecordingResource,
    certificate_pem,
    ec_key,
    failure_of,
    make_certificate,
    result_of,
    rsa_key,
)

PATH = b"/SimpleNotificationService-0123456789abcdef.pem"
LOCALSTACK_PATH = b"/_aws/sns/SimpleNotificationService-6c6f63616c737461636b.pem"
CERT = make_certificate(rsa_key())
PEM = certificate_pem(CERT)


class Harness:
    def __init__(self, routes=None, trusted=(), **kwargs):
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        self.resource = RecordingResource({PATH: (200, PEM), **(routes or {})})
        self.stub = StubTreq(self.resource)
        self.store = CertificateStore(self.stub, self.clock, HostTrust(trusted), **kwargs)

    def fetch(self, url=CERT_URL, region="us-east-1"):
        d = self.store.fetch(url, region)
        self.stub.flush()
        return d


def cache_count(result):
    return REGISTRY.get_sample_value("snsd_cert_cache_total", {"result": result}) or 0.0


def test_fetches_parses_and_returns_the_certificate():
    h = Harness()
    certificate = result_of(h.fetch())
    assert certificate == CERT
    assert h.resource.requests == ["sns.us-east-1.amazonaws.com" + PATH.decode()]


def test_second_fetch_is_served_from_the_cache():
    h = Harness()
    hits, misses = cache_count("hit"), cache_count("miss")
    result_of(h.fetch())
    assert result_of(h.fetch()) == CERT
    assert len(h.resource.requests) == 1
    assert (cache_count("hit") - hits, cache_count("miss") - misses) == (1, 1)


def test_concurrent_callers_share_one_download():
    h = Harness()
    h.resource.hang.add(PATH)  # hold the answer so the callers really overlap
    pending = [h.store.fetch(CERT_URL, "us-east-1") for _ in range(50)]
    h.stub.flush()
    assert not any(d.called for d in pending)
    h.resource.answer_pending()
    h.stub.flush()
    assert [result_of(d) for d in pending] == [CERT] * 50
    assert len(h.resource.requests) == 1


def test_cache_entry_expires_at_the_certificate_not_after():
    cert = make_certificate(rsa_key(), not_after=NOW + timedelta(seconds=120))
    h = Harness(routes={PATH: (200, certificate_pem(cert))})
    result_of(h.fetch())
    h.clock.advance(119)
    result_of(h.fetch())
    assert len(h.resource.requests) == 1
    h.clock.advance(1)
    # Expired from the cache, fetched again, and now refused as expired.
    error = failure_of(h.fetch(), TrustError)
    assert (error.status, error.reason) == (403, "untrusted_certificate")
    assert len(h.resource.requests) == 2


def test_cache_entry_expires_after_the_maximum_ttl():
    h = Harness(max_ttl=600)
    result_of(h.fetch())
    h.clock.advance(599)
    result_of(h.fetch())
    h.clock.advance(1)
    result_of(h.fetch())
    assert len(h.resource.requests) == 2


def test_the_cache_is_bounded():
    paths = [f"/SimpleNotificationService-{i}.pem".encode() for i in range(5)]
    h = Harness(routes={p: (200, PEM) for p in paths}, max_entries=2)
    for p in paths:
        result_of(h.fetch("https://sns.us-east-1.amazonaws.com" + p.decode()))
    assert len(h.store) == 2
    # The most recent two are cached, the first was evicted.
    result_of(h.fetch("https://sns.us-east-1.amazonaws.com" + paths[-1].decode()))
    result_of(h.fetch("https://sns.us-east-1.amazonaws.com" + paths[0].decode()))
    assert len(h.resource.requests) == 6


@pytest.mark.parametrize(
    "url",
    [
        "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-1.pem",
        "https://evil.example/sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem",
        "https://sns.us-east-1.amazonaws.com@evil.example/SimpleNotificationService-1.pem",
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem",
        "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-1.pem",
    ],
)
def test_an_untrusted_url_is_never_requested(url):
    h = Harness()
    error = failure_of(h.fetch(url), TrustError)
    assert error.reason == "untrusted_cert_url"
    assert h.resource.requests == []


@pytest.mark.parametrize(
    "routes, detail",
    [
        ({PATH: (404, b"no")}, "HTTP 404"),
        ({PATH: (500, b"oops")}, "HTTP 500"),
        ({PATH: (302, b"")}, "HTTP 302"),
        ({PATH: (200, b"this is not a certificate")}, "not a PEM"),
        ({PATH: (200, PEM + b"\n" * 20000)}, "larger than"),
    ],
)
def test_a_download_failure_is_a_5xx_cert_fetch_failed(routes, detail):
    h = Harness(routes=routes)
    error = failure_of(h.fetch(), TrustError)
    assert (error.status, error.reason) == (502, "cert_fetch_failed")
    assert detail in error.detail
    assert len(h.store) == 0


def test_a_download_that_never_answers_times_out():
    h = Harness(timeout=5.0)
    h.resource.hang.add(PATH)
    d = h.fetch()
    h.clock.advance(4.9)
    assert not d.called
    h.clock.advance(0.1)
    error = failure_of(d, TrustError)
    assert (error.status, error.reason) == (502, "cert_fetch_failed")


def test_a_dropped_connection_is_a_5xx_cert_fetch_failed():
    h = Harness()
    h.resource.hang.add(PATH)
    d = h.fetch()
    h.resource.drop_pending()
    h.stub.flush()
    error = failure_of(d, TrustError)
    assert (error.status, error.reason) == (502, "cert_fetch_failed")


def test_a_failed_download_is_remembered_for_the_failure_ttl_then_retried():
    h = Harness(routes={PATH: (503, b"")}, failure_ttl=10.0)
    failed_before = cache_count("failed")
    first = failure_of(h.fetch(), TrustError)
    assert (first.status, first.reason) == (502, "cert_fetch_failed")
    h.resource.routes[PATH] = (200, PEM)
    h.clock.advance(9.999)
    for _ in range(5):  # a burst naming the same URL: the same answer, no request
        assert failure_of(h.fetch(), TrustError) is first
    assert len(h.resource.requests) == 1
    assert cache_count("failed") - failed_before == 5
    h.clock.advance(0.001)
    assert result_of(h.fetch()) == CERT
    assert len(h.resource.requests) == 2


def test_a_refused_download_is_remembered_too():
    h = Harness(routes={PATH: (200, certificate_pem(make_certificate(rsa_key(), common_name="evil.example")))})
    assert failure_of(h.fetch(), TrustError).reason == "untrusted_certificate"
    assert failure_of(h.fetch(), TrustError).reason == "untrusted_certificate"
    assert len(h.resource.requests) == 1


def test_remembered_failures_are_bounded():
    h = Harness(max_entries=2)
    urls = [CERT_URL.replace("0123456789abcdef", f"{n:016x}") for n in range(3)]
    for url in urls:
        failure_of(h.fetch(url), TrustError)  # 404
    failure_of(h.fetch(urls[2]), TrustError)  # the newest two: remembered
    failure_of(h.fetch(urls[1]), TrustError)
    assert len(h.resource.requests) == 3
    failure_of(h.fetch(urls[0]), TrustError)  # forgotten (the oldest): asked again
    assert len(h.resource.requests) == 4


def test_a_remembered_failure_still_applies_the_url_rule_first():
    h = Harness(routes={PATH: (503, b"")})
    failure_of(h.fetch(), TrustError)
    assert failure_of(h.fetch(region="eu-west-1"), TrustError).reason == "untrusted_cert_url"


def test_all_concurrent_callers_see_the_failure():
    h = Harness(routes={PATH: (500, b"")})
    h.resource.hang.add(PATH)
    pending = [h.store.fetch(CERT_URL, "us-east-1") for _ in range(3)]
    h.resource.answer_pending()
    h.stub.flush()
    assert {failure_of(d, TrustError).reason for d in pending} == {"cert_fetch_failed"}
    assert len(h.resource.requests) == 1


@pytest.mark.parametrize(
    "cn", ["LocalStack TEST SNS Root Certificate Authority", "evil.example", "sns.amazonaws.com.x"]
)
def test_an_aws_host_certificate_needs_an_sns_common_name(cn):
    h = Harness(routes={PATH: (200, certificate_pem(make_certificate(rsa_key(), common_name=cn)))})
    error = failure_of(h.fetch(), TrustError)
    assert (error.status, error.reason) == (403, "untrusted_certificate")


@pytest.mark.parametrize(
    "cn", ["sns.amazonaws.com", "sns-signing.ap-east-1.amazonaws.com", "sns-cn-north-1.amazonaws.com.cn"]
)
def test_sns_common_names_are_accepted(cn):
    h = Harness(routes={PATH: (200, certificate_pem(make_certificate(rsa_key(), common_name=cn)))})
    assert result_of(h.fetch()).subject.rfc4514_string() == f"CN={cn}"


def test_certificates_outside_their_validity_dates_are_refused():
    for cert in (
        make_certificate(rsa_key(), not_before=NOW - timedelta(days=60), not_after=NOW - timedelta(days=1)),
        make_certificate(rsa_key(), not_before=NOW + timedelta(days=1), not_after=NOW + timedelta(days=60)),
    ):
        h = Harness(routes={PATH: (200, certificate_pem(cert))})
        assert failure_of(h.fetch(), TrustError).reason == "untrusted_certificate"


def test_a_trusted_emulator_host_waives_the_common_name_rule_over_http():
    localstack_cert = make_certificate(rsa_key(), common_name="LocalStack TEST SNS Root Certificate Authority")
    h = Harness(routes={LOCALSTACK_PATH: (200, certificate_pem(localstack_cert))}, trusted=["127.0.0.1:4566"])
    assert result_of(h.fetch(LOCALSTACK_CERT_URL)) == localstack_cert
    assert h.resource.requests == ["127.0.0.1:4566" + LOCALSTACK_PATH.decode()]


def test_an_emulator_url_is_not_requested_unless_its_host_is_trusted():
    h = Harness(routes={LOCALSTACK_PATH: (200, PEM)})
    assert failure_of(h.fetch(LOCALSTACK_CERT_URL), TrustError).reason == "untrusted_cert_url"
    assert h.resource.requests == []


# -- preloaded certificates (--cert-dir) ----------------------------------------------------------

NAME = "SimpleNotificationService-0123456789abcdef.pem"


def cert_dir(tmp_path, files: dict[str, bytes]):
    folder = tmp_path / "certs"
    folder.mkdir()
    for name, body in files.items():
        (folder / name).write_bytes(body)
    return str(folder)


def test_a_preloaded_certificate_is_used_without_any_request(tmp_path):
    h = Harness(preloaded=load_certificate_dir(cert_dir(tmp_path, {NAME: PEM})))
    preloaded_before = cache_count("preloaded")
    assert result_of(h.fetch()) == CERT
    assert result_of(h.fetch()) == CERT  # then from the cache
    assert h.resource.requests == []
    assert cache_count("preloaded") - preloaded_before == 1


def test_a_preloaded_certificate_still_needs_a_trusted_url_of_the_topic_region(tmp_path):
    h = Harness(preloaded=load_certificate_dir(cert_dir(tmp_path, {NAME: PEM})))
    for url, region in [
        (CERT_URL, "eu-west-1"),
        (CERT_URL.replace("https://sns.us-east-1.amazonaws.com", "https://evil.example"), "us-east-1"),
        (CERT_URL.replace("https://", "http://"), "us-east-1"),
    ]:
        assert failure_of(h.fetch(url, region), TrustError).reason == "untrusted_cert_url"
    assert h.resource.requests == []


def test_a_preloaded_certificate_is_checked_for_its_dates_at_the_time_of_use(tmp_path):
    expired_soon = make_certificate(rsa_key(), not_before=NOW - timedelta(days=9), not_after=NOW + timedelta(hours=1))
    h = Harness(preloaded=load_certificate_dir(cert_dir(tmp_path, {NAME: certificate_pem(expired_soon)})))
    assert result_of(h.fetch()) == expired_soon
    h.clock.advance(3600)
    error = failure_of(h.fetch(), TrustError)
    assert (error.status, error.reason, error.detail) == (403, "untrusted_certificate", "certificate has expired")
    assert h.resource.requests == []  # no download in its place


def test_a_preloaded_certificate_on_a_trusted_emulator_host_waives_the_cn_rule(tmp_path):
    name = LOCALSTACK_PATH.decode().rpartition("/")[2]
    h = Harness(trusted=["127.0.0.1:4566"], preloaded={name: make_certificate(rsa_key(), common_name="LocalStack")})
    assert result_of(h.fetch(LOCALSTACK_CERT_URL)).subject.rfc4514_string() == "CN=LocalStack"


def test_certificates_named_otherwise_are_downloaded(tmp_path):
    other = "SimpleNotificationService-ffffffffffffffff.pem"
    h = Harness(preloaded=load_certificate_dir(cert_dir(tmp_path, {other: PEM})))
    assert result_of(h.fetch()) == CERT
    assert len(h.resource.requests) == 1


def test_the_cert_dir_skips_hidden_entries_as_a_configmap_mount_has(tmp_path):
    folder = cert_dir(tmp_path, {NAME: PEM, ".keep": b"x"})
    (tmp_path / "certs" / "..2025_06_01_12_00_00.1").mkdir()
    assert load_certificate_dir(folder) == {NAME: CERT}


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"README": b"x"}, "not named as a SigningCertURL's file"),
        ({NAME: b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"}, "not a PEM certificate"),
        ({NAME: b"x" * 16385}, "larger than 16384 bytes"),
        ({NAME: certificate_pem(make_certificate(rsa_key(), common_name="evil.example"))}, "is not an SNS one"),
        ({NAME: certificate_pem(make_certificate(ec_key(), common_name="sns.amazonaws.com"))}, "key is not RSA"),
    ],
)
def test_the_cert_dir_refuses_what_is_not_an_sns_certificate(tmp_path, files, message):
    folder = cert_dir(tmp_path, files)
    with pytest.raises(ValueError, match=message) as e:
        load_certificate_dir(folder)
    assert folder in str(e.value) and "\n" not in str(e.value)


def test_the_cert_dir_must_be_readable(tmp_path):
    with pytest.raises(ValueError, match=r"cannot read .*missing: No such file or directory"):
        load_certificate_dir(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="cannot read"):
        load_certificate_dir(cert_dir(tmp_path, {NAME: PEM}) + "/" + NAME)  # a file, not a folder


def test_an_ec_certificate_downloaded_is_refused():
    h = Harness(routes={PATH: (200, certificate_pem(make_certificate(ec_key())))})
    error = failure_of(h.fetch(), TrustError)
    assert (error.status, error.reason, error.detail) == (403, "untrusted_certificate", "certificate key is not RSA")


# -- pinned by mutation testing (issue 18) ----------------------------------------------------------


def test_the_size_cap_is_exact():
    assert result_of(Harness(max_bytes=len(PEM)).fetch()) == CERT
    error = failure_of(Harness(max_bytes=len(PEM) - 1).fetch(), TrustError)
    assert f"larger than {len(PEM) - 1} bytes" in error.detail


def test_an_oversized_body_is_refused_as_it_streams_in_not_when_it_ends():
    h = Harness(max_bytes=1000)
    h.resource.hang.add(PATH)
    d = h.fetch()
    for request in h.resource.pending:
        request.write(b"x" * 1001)  # and never finishes
    h.stub.flush()
    error = failure_of(d, TrustError)  # before any timeout
    assert "larger than 1000 bytes" in error.detail


def test_the_default_limits():
    store = CertificateStore(None, Clock(), HostTrust())
    assert (store.timeout, store.max_bytes, store.max_entries, store.max_ttl, store.failure_ttl) == (
        5.0,
        16384,
        64,
        86400.0,
        10.0,
    )


def test_a_certificate_is_valid_from_300_seconds_before_its_not_before():
    cert = make_certificate(rsa_key(), not_before=NOW + timedelta(seconds=300), not_after=NOW + timedelta(days=1))
    assert result_of(Harness(routes={PATH: (200, certificate_pem(cert))}).fetch()) == cert
    cert = make_certificate(rsa_key(), not_before=NOW + timedelta(seconds=301), not_after=NOW + timedelta(days=1))
    error = failure_of(Harness(routes={PATH: (200, certificate_pem(cert))}).fetch(), TrustError)
    assert (error.reason, error.detail) == ("untrusted_certificate", "certificate is not valid yet")


def test_a_certificate_with_two_common_names_is_refused():
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com"),
            x509.NameAttribute(NameOID.COMMON_NAME, "evil.example"),
        ]
    )
    key = rsa_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    error = failure_of(Harness(routes={PATH: (200, certificate_pem(cert))}).fetch(), TrustError)
    assert error.reason == "untrusted_certificate"


def test_a_cache_hit_refreshes_the_entry():
    paths = [f"/SimpleNotificationService-{i}.pem".encode() for i in range(3)]
    h = Harness(routes={p: (200, PEM) for p in paths}, max_entries=2)
    urls = ["https://sns.us-east-1.amazonaws.com" + p.decode() for p in paths]
    result_of(h.fetch(urls[0]))
    result_of(h.fetch(urls[1]))
    result_of(h.fetch(urls[0]))  # now the most recently used
    result_of(h.fetch(urls[2]))  # evicts urls[1], not urls[0]
    result_of(h.fetch(urls[0]))
    assert len(h.resource.requests) == 3


def test_a_download_failure_is_logged_with_the_url():
    h = Harness(routes={PATH: (503, b"")})
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        failure_of(h.fetch(), TrustError)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [(e["url"], e["error"]) for e in events if "could not fetch" in e.get("log_format", "")] == [
        (CERT_URL, "HTTP 503")
    ]


def test_an_expired_preloaded_certificate_is_warned_about_at_startup():
    expired = make_certificate(rsa_key(), not_before=NOW - timedelta(days=9), not_after=NOW - timedelta(days=1))
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        Harness(preloaded={NAME: expired, "SimpleNotificationService-ok.pem": CERT})
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [e["name"] for e in events if "expired on" in e.get("log_format", "")] == [NAME]
    assert [e["count"] for e in events if e.get("log_format", "").endswith("preloaded signing certificates")] == [2]


@pytest.mark.parametrize(
    "cn",
    [
        "snsXamazonaws.com",
        "sns.amazonawsXcom",
        "sns-signingXus-east-1.amazonaws.com",
        "sns-signing.us-east-1Xamazonaws.com",
        "sns-signing.us-east-1.amazonawsXcom",
        "sns-signing.cn-north-1.amazonaws.comXcn",
        "sns-signing.a.b.amazonaws.com",
        "sns-signing..amazonaws.com",
        "sns-us-gov-west-1Xamazonaws.com",
        "sns-us-gov-west-1.amazonawsXcom",
        "sns-cn-north-1.amazonaws.comXcn",
        "sns-a.b.amazonaws.com",
        "sns-.amazonaws.com",
    ],
)
def test_sns_common_names_are_matched_dot_for_dot(cn):
    h = Harness(routes={PATH: (200, certificate_pem(make_certificate(rsa_key(), common_name=cn)))})
    error = failure_of(h.fetch(), TrustError)
    assert (error.status, error.reason) == (403, "untrusted_certificate")


@pytest.mark.parametrize(
    "cn", ["sns-us-gov-west-1.amazonaws.com", "sns-signing.cn-north-1.amazonaws.com.cn", "sns.amazonaws.com"]
)
def test_govcloud_and_china_common_names_are_accepted(cn):
    h = Harness(routes={PATH: (200, certificate_pem(make_certificate(rsa_key(), common_name=cn)))})
    assert result_of(h.fetch()).subject.rfc4514_string() == f"CN={cn}"


def test_a_cert_dir_file_that_cannot_be_opened_is_refused(tmp_path):
    folder = cert_dir(tmp_path, {})
    (tmp_path / "certs" / NAME).symlink_to(tmp_path / "nowhere")  # root reads anything: a dangling link
    with pytest.raises(ValueError, match=f"^cannot read {folder}/{NAME}: No such file or directory$"):
        load_certificate_dir(folder)


def test_the_cert_dir_size_cap_is_exact(tmp_path):
    padded = PEM + b"\n" * (16384 - len(PEM))
    assert load_certificate_dir(cert_dir(tmp_path, {NAME: padded})) == {NAME: CERT}


def test_a_certificate_not_yet_valid_is_a_403():
    cert = make_certificate(rsa_key(), not_before=NOW + timedelta(days=1), not_after=NOW + timedelta(days=2))
    error = failure_of(Harness(routes={PATH: (200, certificate_pem(cert))}).fetch(), TrustError)
    assert (error.status, error.reason) == (403, "untrusted_certificate")


def test_an_expired_entry_leaves_the_cache_when_looked_up():
    h = Harness(max_ttl=60)
    result_of(h.fetch())
    h.clock.advance(60)
    assert h.store.cached(CERT_URL) is None
    assert len(h.store) == 0


def test_a_preloaded_certificate_expiring_at_startup_is_warned_about():
    ending = make_certificate(rsa_key(), not_before=NOW - timedelta(days=9), not_after=NOW)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        Harness(preloaded={NAME: ending})
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [e["name"] for e in events if "expired on" in e.get("log_format", "")] == [NAME]


def test_the_least_recently_used_entry_is_evicted_not_the_newest():
    paths = [f"/SimpleNotificationService-{i}.pem".encode() for i in range(3)]
    h = Harness(routes={p: (200, PEM) for p in paths}, max_entries=2)
    urls = ["https://sns.us-east-1.amazonaws.com" + p.decode() for p in paths]
    for url in urls:
        result_of(h.fetch(url))
    result_of(h.fetch(urls[2]))
    result_of(h.fetch(urls[1]))
    assert len(h.resource.requests) == 3


def test_callers_joining_a_download_count_as_cache_hits():
    h = Harness()
    h.resource.hang.add(PATH)
    hits, misses = cache_count("hit"), cache_count("miss")
    pending = [h.store.fetch(CERT_URL, "us-east-1") for _ in range(5)]
    h.resource.answer_pending()
    h.stub.flush()
    assert [result_of(d) for d in pending] == [CERT] * 5
    assert (cache_count("hit") - hits, cache_count("miss") - misses) == (4, 1)


def test_a_cached_certificate_is_logged_with_its_expiry():
    cert = make_certificate(rsa_key(), not_after=datetime(2025, 6, 1, 13, 0, tzinfo=UTC))
    h = Harness(routes={PATH: (200, certificate_pem(cert))})
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        result_of(h.fetch())
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [(e["url"], e["expires"]) for e in events if "cached signing" in e.get("log_format", "")] == [
        (CERT_URL, "2025-06-01T13:00:00+00:00")
    ]
