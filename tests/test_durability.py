"""Nothing accepted is lost: the real twistd, killed or stopped in the middle of a burst, then
restarted on the same spool.  Every MessageId answered 200 must end with a result line or a
dead letter."""

import json
import signal
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.process_helpers import Daemon, notification

pytestmark = pytest.mark.process

SLOW = {"SNSD_TEST_JOB_SECONDS": "0.3"}


def s3_message(key):
    return json.dumps(
        {
            "Records": [
                {
                    "eventVersion": "2.1",
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": "b"}, "object": {"key": key}},
                }
            ]
        }
    )


def burst(daemon, count, prefix):
    """POST ``count`` notifications concurrently; return the MessageIds answered 200."""

    def one(i):
        message_id = f"{prefix}-{i}"
        status, _, _ = daemon.post(notification(s3_message(f"{prefix}/{i}.csv"), message_id))
        return message_id if status == 200 else None

    with ThreadPoolExecutor(8) as pool:
        return {m for m in pool.map(one, range(count)) if m}


def accounted(daemon):
    """MessageIds with a result line, and MessageIds with a dead letter."""
    with_result = {line["message_id"] for line in daemon.result_lines()}
    dead = set()
    if daemon.spool.exists():
        conn = sqlite3.connect(daemon.spool)
        dead = {m for (m,) in conn.execute("SELECT message_id FROM dead_letters")}
        conn.close()
    return with_result, dead


def daemon_args(*extra):
    return ("--no-verify-signatures", "--job", "snsd_test_jobs:slow", "--workers", "4", *extra)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_every_accepted_message_ends_with_a_result_after_a_stop_and_restart(tmp_path, how):
    daemon = Daemon(tmp_path, *daemon_args("--drain-timeout", "30"), env=SLOW).start()
    accepted = burst(daemon, 40, "burst")
    assert len(accepted) == 40
    daemon.wait_for(lambda: daemon.result_lines(), what="the first results")
    daemon.signal(how)
    code = daemon.wait()
    assert code == (0 if how == signal.SIGTERM else -signal.SIGKILL)
    finished_before = {line["message_id"] for line in daemon.result_lines()}
    assert finished_before < accepted  # stopped mid-burst: some were still owed a result

    daemon.start()
    try:

        def all_accounted():
            with_result, dead = accounted(daemon)
            return accepted <= with_result | dead

        daemon.wait_for(all_accounted, timeout=60, what="every accepted message to be accounted for")
        lines = daemon.result_lines()
        assert all(line["status"] == "ok" for line in lines)
        if how == signal.SIGTERM:
            # A drain lets running jobs finish, so nothing ran twice.
            assert len(lines) == len({line["message_id"] for line in lines}) == 40
        assert "recovered" in daemon.output()
    finally:
        assert daemon.stop() == 0


def test_a_drain_timeout_leaves_running_jobs_spooled_for_the_next_start(tmp_path):
    daemon = Daemon(
        tmp_path, *daemon_args("--drain-timeout", "0.5", "--workers", "2"), env={"SNSD_TEST_JOB_SECONDS": "5"}
    ).start()
    accepted = burst(daemon, 3, "long")
    daemon.wait_for(lambda: b"snsd_jobs_running 2.0" in daemon.get("/metrics")[1], what="two jobs running")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0
    assert "drain timed out" in daemon.output()
    assert daemon.result_lines() == []
    daemon.env["SNSD_TEST_JOB_SECONDS"] = "0"
    daemon.start()
    try:
        daemon.wait_for(
            lambda: {line["message_id"] for line in daemon.result_lines()} == accepted,
            what="the interrupted jobs to run again",
        )
    finally:
        daemon.stop()


def test_an_in_memory_spool_logs_unstarted_records_as_dead_letters_at_shutdown(tmp_path):
    daemon = Daemon(
        tmp_path, *daemon_args("--drain-timeout", "0.2", "--workers", "1"), env={"SNSD_TEST_JOB_SECONDS": "3"}
    )
    daemon.args[daemon.args.index("--spool") + 1] = ":memory:"
    daemon.start()
    accepted = burst(daemon, 4, "mem")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0
    logged = [m for m in accepted if f"of {m} not started before shutdown" in daemon.output()]
    with_result = {line["message_id"] for line in daemon.result_lines()}
    assert set(logged) | with_result == accepted


def test_backpressure_and_spool_mode_hold_records_while_the_breaker_is_open(tmp_path):
    daemon = Daemon(
        tmp_path,
        "--no-verify-signatures",
        "--job",
        "snsd_test_jobs:echo",
        "--max-pending",
        "5",
        "--breaker-mode",
        "spool",
    ).start()
    try:
        assert daemon.request("POST", "/breaker/open")[0] == 200
        for i in range(5):
            status, body, _ = daemon.post(notification(s3_message(f"held/{i}.csv"), f"held-{i}"))
            assert (status, json.loads(body)["status"]) == (200, "spooled")
        status, _, headers = daemon.post(notification(s3_message("held/5.csv"), "held-5"))
        assert status == 503 and headers.get("Retry-After")
        assert daemon.result_lines() == []
        assert daemon.request("POST", "/breaker/reset")[0] == 200
        daemon.wait_for(lambda: len(daemon.result_lines()) == 5, what="the held records to run")
        assert {line["message_id"] for line in daemon.result_lines()} == {f"held-{i}" for i in range(5)}
        # The refused message recorded nothing, so SNS's retry is accepted, not a duplicate.
        status, body, _ = daemon.post(notification(s3_message("held/5.csv"), "held-5"))
        assert (status, json.loads(body)["status"]) == (200, "accepted")
    finally:
        assert daemon.stop() == 0


def test_duplicates_are_recognised_after_a_restart(tmp_path):
    daemon = Daemon(tmp_path, "--no-verify-signatures", "--job", "snsd_test_jobs:echo").start()
    body = notification(s3_message("once.csv"), "only-once")
    assert json.loads(daemon.post(body)[1])["status"] == "accepted"
    daemon.wait_for(lambda: daemon.result_lines(), what="the result")
    assert daemon.stop() == 0
    daemon.start()
    try:
        assert json.loads(daemon.post(body)[1]) == {"status": "duplicate"}
        assert len(daemon.result_lines()) == 1
    finally:
        assert daemon.stop() == 0
