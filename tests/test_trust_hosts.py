"""The URL trust rule shared by SigningCertURL and SubscribeURL."""

from __future__ import annotations

import pytest

from snsd.trust.errors import TrustError
from snsd.trust.hosts import HostTrust

AWS = HostTrust()
LOCALSTACK = HostTrust(["127.0.0.1:4566", " localhost.localstack.cloud:4566 ", ""])
PEM = "SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem"


@pytest.mark.parametrize(
    "url, region",
    [
        (f"https://sns.us-east-1.amazonaws.com/{PEM}", "us-east-1"),
        (f"https://sns.eu-west-3.amazonaws.com/{PEM}", "eu-west-3"),
        (f"https://sns.cn-north-1.amazonaws.com.cn/{PEM}", "cn-north-1"),
    ],
)
def test_aws_certificate_urls_of_the_topic_region_are_trusted(url, region):
    AWS.check_cert_url(url, region)


@pytest.mark.parametrize(
    "url",
    [
        # look-alikes from the issue
        f"https://sns.us-east-1.amazonaws.com.evil.example/{PEM}",
        f"https://evil.example/sns.us-east-1.amazonaws.com/{PEM}",
        # userinfo: the real host is evil.example
        f"https://sns.us-east-1.amazonaws.com@evil.example/{PEM}",
        f"https://user:pw@sns.us-east-1.amazonaws.com/{PEM}",
        # plain http, explicit ports, other schemes
        f"http://sns.us-east-1.amazonaws.com/{PEM}",
        f"https://sns.us-east-1.amazonaws.com:443/{PEM}",
        f"https://sns.us-east-1.amazonaws.com:8443/{PEM}",
        f"ftp://sns.us-east-1.amazonaws.com/{PEM}",
        f"HTTPS://sns.us-east-1.amazonaws.com/{PEM}",
        # case, trailing dot, prefixes, suffixes, encodings
        f"https://SNS.US-EAST-1.AMAZONAWS.COM/{PEM}",
        f"https://sns.us-east-1.amazonaws.com./{PEM}",
        f"https://xsns.us-east-1.amazonaws.com/{PEM}",
        f"https://sns.us-east-1.amazonaws.com.cn.evil.example/{PEM}",
        f"https://sns.us-east-1.amazonaws%2ecom/{PEM}",
        f"https://sns.us-east-1.amazonaws.com\\@evil.example/{PEM}",
        f"https://sns.us-east-1.amazonaws.com /{PEM}",
        f"https://sns.us-east-1.amazonaws.com\n/{PEM}",
        "https://sns.us-east-1.amazonaws.com",
        # region of another topic, or not a region at all
        f"https://sns.us-west-2.amazonaws.com/{PEM}",
        f"https://sns.evil.amazonaws.com/{PEM}",
        # the file name rule
        "https://sns.us-east-1.amazonaws.com/evil.pem",
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem.exe",
        f"https://sns.us-east-1.amazonaws.com/{PEM}/",
        f"https://sns.us-east-1.amazonaws.com/{PEM}?x=1",
        f"https://sns.us-east-1.amazonaws.com/{PEM}#frag",
        f"https://sns.us-east-1.amazonaws.com/a/../{PEM}",
        # not a string at all
        None,
    ],
)
def test_untrusted_certificate_urls_are_refused(url):
    with pytest.raises(TrustError) as e:
        AWS.check_cert_url(url, "us-east-1")
    assert (e.value.status, e.value.reason) == (403, "untrusted_cert_url")


def test_region_must_match_the_topic():
    url = f"https://sns.us-east-1.amazonaws.com/{PEM}"
    AWS.check_cert_url(url, "us-east-1")
    with pytest.raises(TrustError, match="untrusted_cert_url"):
        AWS.check_cert_url(url, "eu-west-1")
    # A region with regex metacharacters is refused, not interpreted.
    with pytest.raises(TrustError, match="untrusted_cert_url"):
        AWS.check_cert_url(url, "us-east-.")


def test_region_none_accepts_any_sns_region_but_nothing_else():
    AWS.check_cert_url(f"https://sns.ap-south-2.amazonaws.com/{PEM}", None)
    with pytest.raises(TrustError):
        AWS.check_cert_url(f"https://sns.ap-south-2.amazonaws.com.evil.example/{PEM}", None)


def test_localstack_certificate_url_is_trusted_over_http_in_any_region():
    url = f"http://127.0.0.1:4566/_aws/sns/{PEM}"
    LOCALSTACK.check_cert_url(url, "us-east-1")
    LOCALSTACK.check_cert_url(url, "eu-central-1")
    LOCALSTACK.check_cert_url(f"https://localhost.localstack.cloud:4566/_aws/sns/{PEM}", "us-east-1")
    assert LOCALSTACK.is_trusted_host(url)
    assert not LOCALSTACK.is_trusted_host(f"https://sns.us-east-1.amazonaws.com/{PEM}")
    assert LOCALSTACK.trusted_hosts == ("127.0.0.1:4566", "localhost.localstack.cloud:4566")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:4566/_aws/sns/not-a-cert.pem",  # file-name rule still applies
        f"http://127.0.0.1:4567/_aws/sns/{PEM}",  # another port
        f"http://127.0.0.1/_aws/sns/{PEM}",  # default port
        f"http://127.0.0.2:4566/_aws/sns/{PEM}",
        f"http://127.0.0.1:4566@evil.example/{PEM}",
        f"http://evil.example/127.0.0.1:4566/{PEM}",
        f"http://127.0.0.1.:4566/{PEM}",
    ],
)
def test_trusted_host_rule_is_exact(url):
    with pytest.raises(TrustError, match="untrusted_cert_url"):
        LOCALSTACK.check_cert_url(url, "us-east-1")


def test_a_trusted_host_without_port_matches_only_the_scheme_default_port():
    trust = HostTrust(["localhost"])
    trust.check_cert_url(f"http://localhost/{PEM}", "us-east-1")
    trust.check_cert_url(f"http://localhost:80/{PEM}", "us-east-1")
    trust.check_cert_url(f"https://localhost/{PEM}", "us-east-1")
    with pytest.raises(TrustError):
        trust.check_cert_url(f"http://localhost:4566/{PEM}", "us-east-1")
    with pytest.raises(TrustError):
        trust.check_cert_url(f"http://localhost:443/{PEM}", "us-east-1")


def test_trusted_hosts_are_case_insensitive_in_configuration_and_may_be_ipv6():
    trust = HostTrust(["LocalHost:4566", "[::1]:4566"])
    trust.check_cert_url(f"http://localhost:4566/{PEM}", "us-east-1")
    trust.check_cert_url(f"http://[::1]:4566/{PEM}", "us-east-1")


@pytest.mark.parametrize("entry", ["user@host", "host:port", "host:99999", "host.", "http://host"])
def test_malformed_trusted_hosts_are_configuration_errors(entry):
    with pytest.raises(ValueError):
        HostTrust([entry])


def test_subscribe_urls_follow_the_same_host_rule_but_may_carry_a_query():
    good = "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-east-1:1:t&Token=x"
    AWS.check_subscribe_url(good, "us-east-1")
    LOCALSTACK.check_subscribe_url("http://127.0.0.1:4566/?Action=ConfirmSubscription&Token=x", "us-east-1")
    for bad in (
        good.replace("https://", "http://"),
        good.replace("sns.us-east-1.amazonaws.com", "sns.us-east-1.amazonaws.com.evil.example"),
        good.replace("sns.us-east-1.amazonaws.com", "sns.us-east-1.amazonaws.com@169.254.169.254"),
        good.replace("sns.us-east-1.amazonaws.com", "169.254.169.254"),
        "http://127.0.0.1:4566/?Action=ConfirmSubscription",  # not trusted without the emulator option
    ):
        with pytest.raises(TrustError) as e:
            AWS.check_subscribe_url(bad, "us-east-1")
        assert (e.value.status, e.value.reason) == (403, "untrusted_subscribe_url")
    with pytest.raises(TrustError, match="untrusted_subscribe_url"):
        AWS.check_subscribe_url(good, "eu-west-1")


# -- pinned by mutation testing (issue 18): each of these once let a plausible bug through ------------


@pytest.mark.parametrize(
    "host",
    [
        "sns.us-east-1-amazonaws.com",  # an unescaped "." after the region
        "sns-us-east-1.amazonaws.com",  # ... after "sns"
        "sns.us-east-1.amazonaws-com",  # ... in "amazonaws.com"
        "sns.us-east-1.amazonaws.com-cn",  # ... before "cn"
        "sns..amazonaws.com",
    ],
)
@pytest.mark.parametrize("region", ["us-east-1", None])
def test_every_dot_of_the_sns_host_is_a_dot(host, region):
    with pytest.raises(TrustError) as e:
        AWS.check_cert_url(f"https://{host}/{PEM}", region)
    assert (e.value.status, e.value.reason) == (403, "untrusted_cert_url")


def test_a_topic_region_that_is_not_a_region_is_refused_whatever_the_host():
    # A TopicArn "arn:aws:sns:evilbucket.s3:…" would otherwise name an S3 bucket's host.
    with pytest.raises(TrustError) as e:
        AWS.check_cert_url(f"https://sns.evilbucket.s3.amazonaws.com/{PEM}", "evilbucket.s3")
    assert (e.value.status, e.value.reason) == (403, "untrusted_cert_url")
    assert "TopicArn region is malformed" in e.value.detail
    with pytest.raises(TrustError, match="untrusted_subscribe_url"):
        AWS.check_subscribe_url("https://sns.evilbucket.s3.amazonaws.com/?Action=ConfirmSubscription", "evilbucket.s3")


@pytest.mark.parametrize(
    ("trust", "url"),
    [
        (AWS, f"https://sns.us-east-1.amazonaws.com:abc/{PEM}"),
        (AWS, f"https://sns.us-east-1.amazonaws.com:/{PEM}"),
        (LOCALSTACK, f"http://127.0.0.1:+4566/_aws/sns/{PEM}"),
        (LOCALSTACK, f"http://127.0.0.1:4566x/_aws/sns/{PEM}"),
        (LOCALSTACK, f"http://127.0.0.1:-4566/_aws/sns/{PEM}"),
        (LOCALSTACK, f"http://127.0.0.1:4566:4566/_aws/sns/{PEM}"),
        (LOCALSTACK, f"http://127.0.0.1:45.66/_aws/sns/{PEM}"),
        (LOCALSTACK, f"http://127.0.0.1:004566/_aws/sns/{PEM}"),  # six digits
        (LOCALSTACK, f"http://[::1]x/_aws/sns/{PEM}"),
    ],
)
def test_a_port_that_is_not_a_number_is_refused_cleanly(trust, url):
    with pytest.raises(TrustError) as e:  # not ValueError from int(), and never trusted
        trust.check_cert_url(url, "us-east-1")
    assert (e.value.status, e.value.reason) == (403, "untrusted_cert_url")
    assert "malformed port" in e.value.detail or "port out of range" in e.value.detail
    assert not trust.is_trusted_host(url)


def test_ports_are_1_to_65535():
    HostTrust(["h:1"]).check_cert_url(f"http://h:1/{PEM}", None)
    HostTrust(["h:65535"]).check_cert_url(f"http://h:65535/{PEM}", None)
    for entry in ("h:0", "h:65536"):
        with pytest.raises(ValueError, match="port out of range"):
            HostTrust([entry])
    with pytest.raises(TrustError, match="port out of range"):
        HostTrust(["h:65535"]).check_cert_url(f"http://h:65536/{PEM}", None)


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("user@host:4566", "userinfo"),
        ("local_host:4566", "not a lowercase hostname"),
        ("ho st", "not a lowercase hostname"),
        ("[::1", "not a lowercase hostname"),
        (".host", "malformed host"),
        ("a..b", "malformed host"),
        ("host:", "malformed port"),
        (":4566", "not a lowercase hostname"),  # no host at all
        ("[]:4566", "not a lowercase hostname"),
    ],
)
def test_malformed_trusted_hosts_say_what_is_wrong(entry, why):
    with pytest.raises(ValueError, match=why):
        HostTrust([entry])


@pytest.mark.parametrize(
    ("url", "why"),
    [
        (f"https://user@sns.us-east-1.amazonaws.com/{PEM}", "userinfo in URL"),
        (f"https://sns_.us-east-1.amazonaws.com/{PEM}", "not a lowercase hostname"),
        (f"https://sns.us-east-1.amazonaws.com./{PEM}", "malformed host"),
        (f"https://sns.us-east-1.amazonaws.com:443/{PEM}", "explicit port"),
        (f"http://sns.us-east-1.amazonaws.com/{PEM}", "not https"),
        (f"https://sns.us-east-1.amazonaws.com/{PEM}#x", "fragment"),
        (f"https://sns.us-east-1.amazonaws.com/{PEM}?x", "query"),
    ],
)
def test_refusals_say_why(url, why):
    with pytest.raises(TrustError) as e:
        AWS.check_cert_url(url, "us-east-1")
    assert why in e.value.detail


@pytest.mark.parametrize(
    "name",
    [
        "SimpleNotificationService-.pem",  # an empty id
        "SimpleNotificationService-a.b.pem",  # a dot in the id
        "SimpleNotificationService-abcXpem",  # no ".pem"
        "SimpleNotificationService-ab/c.pem",
    ],
)
def test_the_certificate_file_name_is_exact(name):
    with pytest.raises(TrustError, match="untrusted_cert_url"):
        AWS.check_cert_url(f"https://sns.us-east-1.amazonaws.com/{name}", "us-east-1")


def test_certificate_ids_may_hold_letters_digits_dashes_and_underscores():
    AWS.check_cert_url("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-aZ09_-x.pem", "us-east-1")


def test_is_trusted_host_is_false_for_what_does_not_parse():
    assert not LOCALSTACK.is_trusted_host("http://127.0.0.1:4566@x/")
    assert not LOCALSTACK.is_trusted_host(None)


def test_a_long_url_is_cut_to_200_characters_in_the_refusal():
    url = "https://evil.example/" + "a" * 500
    for check in (AWS.check_cert_url, AWS.check_subscribe_url):
        with pytest.raises(TrustError) as e:
            check(url, "us-east-1")
        assert e.value.detail.endswith(": " + url[:200])


def test_urls_that_passed_are_remembered_up_to_a_bound_oldest_forgotten_first():
    trust = HostTrust()
    urls = [f"https://sns.us-east-1.amazonaws.com/SimpleNotificationService-{n}.pem" for n in range(300)]
    for url in urls:
        trust.check_cert_url(url, "us-east-1")
    assert len(trust._passed) == 256
    assert (urls[-1], "us-east-1") in trust._passed
    assert (urls[0], "us-east-1") not in trust._passed
    # A remembered URL still needs the same region.
    with pytest.raises(TrustError):
        trust.check_cert_url(urls[-1], "eu-west-1")


def test_a_trusted_host_without_port_matches_https_on_443():
    trust = HostTrust(["localhost"])
    trust.check_cert_url(f"https://localhost:443/{PEM}", "us-east-1")
    with pytest.raises(TrustError):
        trust.check_cert_url(f"https://localhost:80/{PEM}", "us-east-1")


def test_ipv6_trusted_hosts_may_embed_an_ipv4_address():
    trust = HostTrust(["[::ffff:127.0.0.1]:4566"])
    trust.check_cert_url(f"http://[::ffff:127.0.0.1]:4566/{PEM}", None)
