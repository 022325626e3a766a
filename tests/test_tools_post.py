"""``snsd-post`` against a real HTTP listener on loopback.

The listener is a small threaded ``http.server`` that records what arrives; the tool runs as a
real process (``python -m snsd.tools.post``), so argument parsing, the reactor, treq and the
connection pool are all exercised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from snsd.envelope import parse_envelope
from snsd.records import parse_s3_message
from snsd.tools.post import build_notification, percentile
from snsd.trust.signing import verify_signature
from tests.trust_helpers import make_certificate, private_key_pem, rsa_key


class Listener:
    """Records each POST (headers, body, client port); answers ``status`` or waits at a barrier."""

    def __init__(self, status: int = 200, barrier: threading.Barrier | None = None):
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        listener = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is visible

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with listener.lock:
                    listener.in_flight += 1
                    listener.max_in_flight = max(listener.max_in_flight, listener.in_flight)
                code = status
                if barrier is not None:
                    try:
                        barrier.wait(timeout=10)  # all of a batch must be in flight at once
                    except threading.BrokenBarrierError:
                        code = 500
                with listener.lock:
                    listener.in_flight -= 1
                    listener.requests.append(
                        {
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                            "port": self.client_address[1],
                        }
                    )
                answer = b'{"ok": true}'
                self.send_response(code)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def post(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snsd.tools.post", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def test_each_copy_is_a_parseable_notification_with_its_own_message_id():
    with Listener() as listener:
        result = post(listener.url, "-n", "5", "-c", "2", "--key", "uploads/a b+c é.csv")
    assert result.returncode == 0, result.stderr
    assert len(listener.requests) == 5
    ids = set()
    for request in listener.requests:
        envelope = parse_envelope(request["body"], request["headers"]["x-amz-sns-message-type"])
        assert envelope.type == "Notification"
        assert request["headers"]["x-amz-sns-message-id"] == envelope.message_id
        ids.add(envelope.message_id)
        [record] = parse_s3_message(envelope.message).records
        assert (record.bucket, record.key) == ("incoming", "uploads/a b+c é.csv")
    assert len(ids) == 5
    assert "status 200: 5" in result.stdout


def test_same_id_gives_every_copy_one_message_id():
    with Listener() as listener:
        result = post(listener.url, "-n", "3", "--same-id")
    assert result.returncode == 0, result.stderr
    assert len({json.loads(r["body"])["MessageId"] for r in listener.requests}) == 1


def test_concurrency_puts_that_many_requests_in_flight_and_no_more():
    # The listener holds each request until 4 are in flight: fewer would break the barrier (500).
    with Listener(barrier=threading.Barrier(4)) as listener:
        result = post(listener.url, "-n", "8", "-c", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    assert listener.max_in_flight == 4
    assert "status 200: 8" in result.stdout


def test_connections_are_kept_alive_and_reused():
    with Listener() as listener:
        result = post(listener.url, "-n", "20", "-c", "2")
    assert result.returncode == 0, result.stderr
    assert len({r["port"] for r in listener.requests}) < 20


def test_failures_are_counted_and_make_the_exit_code_nonzero():
    with Listener(status=503) as listener:
        result = post(listener.url, "-n", "3")
    assert result.returncode == 1
    assert "status 503: 3" in result.stdout
    assert len(listener.requests) == 3


def test_the_default_message_is_event_json_in_the_current_directory(tmp_path):
    (tmp_path / "event.json").write_text(json.dumps({"Records": []}))
    with Listener() as listener:
        result = post(listener.url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(json.loads(listener.requests[0]["body"])["Message"]) == {"Records": []}


@pytest.mark.parametrize("version", ["1", "2"])
def test_signed_copies_verify_against_the_matching_certificate(tmp_path, version):
    key = rsa_key()
    key_path = tmp_path / "sns.pem"
    key_path.write_bytes(private_key_pem(key))
    cert_url = "http://127.0.0.1:4566/_aws/sns/SimpleNotificationService-test.pem"
    with Listener() as listener:
        result = post(
            listener.url, "-n", "2", "--sign-key", str(key_path), "--cert-url", cert_url, "--signature-version", version
        )
    assert result.returncode == 0, result.stderr
    certificate = make_certificate(key)
    for request in listener.requests:
        fields = json.loads(request["body"])
        assert fields["SigningCertURL"] == cert_url
        assert fields["SignatureVersion"] == version
        verify_signature(fields, certificate)  # raises TrustError if the signature is wrong


def test_sign_key_without_cert_url_is_refused(tmp_path):
    key_path = tmp_path / "sns.pem"
    key_path.write_bytes(private_key_pem(rsa_key()))
    result = post("http://127.0.0.1:9/", "--sign-key", str(key_path))
    assert result.returncode == 2
    assert "--cert-url" in result.stderr


def test_build_notification_carries_subject_and_region_specific_unsubscribe_url():
    fields = build_notification("{}", "arn:aws:sns:eu-west-1:123456789012:t", message_id="m-1", subject="hi")
    assert fields["MessageId"] == "m-1" and fields["Subject"] == "hi"
    assert fields["UnsubscribeURL"].startswith("https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe")
    assert parse_envelope(json.dumps(fields).encode()).topic_arn == "arn:aws:sns:eu-west-1:123456789012:t"


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([], 0.5) == 0.0
