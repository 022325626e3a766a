"""The trust options of `twistd snsd`: --cert-dir and HTTPS_PROXY, refused at startup in one line."""

from __future__ import annotations

import pytest
from twisted.python import usage

from snsd.config import SNSDOptions
from tests.trust_helpers import certificate_pem, make_certificate, rsa_key

HEAD = "snsd.jobs.head:head_object"
NAME = "SimpleNotificationService-0123456789abcdef.pem"


def parse(args, env=None):
    options = SNSDOptions(environ=env or {})
    options.parseOptions(["--dry-run", "--job", HEAD, *args])
    return options.settings


def test_cert_dir_defaults_to_none_and_is_read_from_flag_or_environment(tmp_path):
    (tmp_path / NAME).write_bytes(certificate_pem(make_certificate(rsa_key())))
    assert parse([]).cert_dir is None
    assert parse(["--cert-dir", str(tmp_path)]).cert_dir == str(tmp_path)
    assert parse([], {"SNSD_CERT_DIR": str(tmp_path)}).cert_dir == str(tmp_path)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (None, "--cert-dir: cannot read {dir}/missing: No such file or directory"),
        ({"notes.txt": b"x"}, "--cert-dir: {dir}/notes.txt: not named as a SigningCertURL's file"),
        ({NAME: b"junk"}, "--cert-dir: {dir}/" + NAME + ": not a PEM certificate"),
    ],
)
def test_an_unusable_cert_dir_stops_startup_with_one_line(tmp_path, files, message):
    folder = tmp_path / "missing" if files is None else tmp_path
    for name, body in (files or {}).items():
        (tmp_path / name).write_bytes(body)
    with pytest.raises(usage.UsageError) as e:
        parse(["--cert-dir", str(folder)])
    assert str(e.value).startswith(message.format(dir=tmp_path))
    assert "\n" not in str(e.value)


def test_a_cert_dir_from_the_environment_is_named_by_its_variable(tmp_path):
    (tmp_path / NAME).write_bytes(b"junk")
    with pytest.raises(usage.UsageError, match=r"^SNSD_CERT_DIR: "):
        parse([], {"SNSD_CERT_DIR": str(tmp_path)})


def test_an_unusable_https_proxy_stops_startup_with_one_line():
    with pytest.raises(usage.UsageError, match=r"^HTTPS_PROXY 'https://proxy:3128': only http:// proxies"):
        parse([], {"HTTPS_PROXY": "https://proxy:3128"})
    assert parse([], {"HTTPS_PROXY": "http://proxy:3128"}).cert_dir is None
