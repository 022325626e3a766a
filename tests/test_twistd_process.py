"""The real ``twistd -n snsd`` process: plugin discovery, a notification in, a result line out."""

import json
import signal
from pathlib import Path

import pytest

from tests.process_helpers import Daemon, notification

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.process


def test_twistd_help_lists_the_plugin_and_its_options():
    import subprocess

    from tests.process_helpers import TWISTD

    listing = subprocess.run([TWISTD, "--help"], capture_output=True, text=True, check=True).stdout
    assert "snsd" in listing
    help_text = subprocess.run([TWISTD, "snsd", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--breaker-mode" in help_text and "SNS_WORKER_MAX" in help_text


def test_a_bad_option_stops_startup_with_a_usage_error_not_a_traceback(tmp_path):
    import subprocess

    from tests.process_helpers import TWISTD

    run = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "snsd", "--workers", "-3", "--dry-run"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "--workers must be positive" in output
    assert "Traceback" not in output


def test_a_port_already_taken_ends_startup_with_exit_1_and_says_why(tmp_path):
    import socket
    import subprocess

    from tests.process_helpers import TWISTD

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        run = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "snsd", "--dry-run", "--no-verify-signatures",
             "--job", "snsd.jobs.head:head_object", "--port", f"tcp:{port}:interface=127.0.0.1",
             "--admin-port", "tcp:0:interface=127.0.0.1"],
            capture_output=True, text=True, cwd=tmp_path, timeout=60,
        )  # fmt: skip
    assert run.returncode == 1
    assert f"cannot listen on tcp:{port}:interface=127.0.0.1" in run.stdout
    assert "ready:" not in run.stdout


def test_notification_with_event_json_yields_its_result_line(tmp_path):
    daemon = Daemon(tmp_path, "--no-verify-signatures", "--job", "snsd_test_jobs:echo").start()
    try:
        message = (ROOT / "event.json").read_text()
        expected_keys = sorted(r["s3"]["object"]["key"] for r in json.loads(message)["Records"])
        status, body, _ = daemon.post(notification(message, "msg-event-json"))
        assert status == 200, body
        assert json.loads(body) == {"status": "accepted", "jobs": len(expected_keys)}
        lines = daemon.wait_for(
            lambda: len(daemon.result_lines()) >= len(expected_keys) and daemon.result_lines(), what="result lines"
        )
        from urllib.parse import unquote_plus

        assert sorted(line["key"] for line in lines) == sorted(unquote_plus(k) for k in expected_keys)
        line = lines[0]
        assert line["status"] == "ok" and line["message_id"] == "msg-event-json"
        assert line["result"]["echo"] == line["key"]
        assert line["started_at"].endswith("Z") and line["worker"].startswith("PoolThread-snsd-jobs")
    finally:
        assert daemon.stop() == 0


def test_sigterm_exits_zero_and_says_it_stopped(tmp_path):
    daemon = Daemon(tmp_path, "--no-verify-signatures", "--job", "snsd_test_jobs:echo").start()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert "stopped" in daemon.output()


def test_a_declared_oversized_body_is_refused_before_it_is_sent(tmp_path):
    import socket

    daemon = Daemon(tmp_path, "--no-verify-signatures", "--job", "snsd_test_jobs:echo", "--max-body", "4096").start()
    try:
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
            # Declare 50 MB and send none of it: the answer must come anyway, so nothing was buffered.
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 50000000\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert b'"error": "body larger than 4096 bytes"' in answer
        assert daemon.get("/healthz")[0] == 200
    finally:
        assert daemon.stop() == 0
