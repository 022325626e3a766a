"""Nothing accepted is lost: the real twistd, killed or stopped in the middle of a burst, then
restarted on the same spool.  Every MessageId answered 200 must end with a result line or a
dead letter."""

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import pytest_twisted

from tests.process_helpers import Daemon, notification

process = pytest.mark.process

SLOW = {"SNSD_TEST_JOB_SECONDS": "0.3"}
ADMIN = str(Path(sys.executable).with_name("snsd-admin"))


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
    """POST ``count`` notifications concurrently; return the MessageIds answered 200 "accepted".

    Message ``{prefix}-{i}`` carries object ``{prefix}/{i}.csv``, so a result line can be
    checked against the MessageId it carries."""

    def one(i):
        message_id = f"{prefix}-{i}"
        status, body, _ = daemon.post(notification(s3_message(f"{prefix}/{i}.csv"), message_id))
        return message_id if status == 200 and json.loads(body)["status"] == "accepted" else None

    with ThreadPoolExecutor(8) as pool:
        return {m for m in pool.map(one, range(count)) if m}


def rows(daemon, sql, *params):
    conn = sqlite3.connect(daemon.spool, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def accounted(daemon):
    """MessageIds with a result line, and MessageIds with a dead letter."""
    with_result = {line["message_id"] for line in daemon.result_lines()}
    dead = {m for (m,) in rows(daemon, "SELECT message_id FROM dead_letters")} if daemon.spool.exists() else set()
    return with_result, dead


def jobs_running(daemon):
    status, body, _ = daemon.admin("GET", "/metrics")
    for line in body.decode().splitlines() if status == 200 else ():
        if line.startswith("snsd_jobs_running "):
            return float(line.split()[1])
    return None


def daemon_args(*extra):
    return ("--no-verify-signatures", "--job", "snsd_test_jobs:slow", "--workers", "4", *extra)


@process
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
    (owed,) = rows(daemon, "SELECT COUNT(*) FROM records")[0]
    assert owed >= len(accepted - finished_before)  # what is owed is in the spool file

    daemon.start()
    try:

        def all_accounted():
            with_result, dead = accounted(daemon)
            return accepted <= with_result | dead

        daemon.wait_for(all_accounted, timeout=60, what="every accepted message to be accounted for")
        lines = daemon.result_lines()
        with_result, dead = accounted(daemon)
        print(
            f"{how.name}: 40 accepted, {len(finished_before)} with a result before the stop, {owed} records left in"
            f" the spool, after the restart {len(with_result)} with a result ({len(lines)} lines), {len(dead)} dead"
        )
        assert (len(with_result), len(dead)) == (40, 0)
        assert all(line["status"] == "ok" for line in lines)
        # Each result carries the MessageId of the notification that named its object.
        assert all(line["message_id"] == line["key"].replace("/", "-").removesuffix(".csv") for line in lines)
        assert {line["message_id"] for line in lines} == accepted
        if how == signal.SIGTERM:
            # A drain lets running jobs finish, so nothing ran twice.
            assert len(lines) == 40
        else:
            # At least once: jobs killed between their result and its spool commit run again.
            assert len(lines) >= 40
        assert "recovered" in daemon.output()
        daemon.wait_for(lambda: rows(daemon, "SELECT COUNT(*) FROM records") == [(0,)], what="an empty spool")
    finally:
        assert daemon.stop() == 0


@process
def test_a_sigkill_while_messages_are_arriving_loses_no_acknowledged_one(tmp_path):
    """Killed mid-POST-burst: a 200 is only ever sent after the commit, so every message that got
    one is in the spool file, runs after the restart, and is a duplicate if SNS sends it again."""
    daemon = Daemon(tmp_path, *daemon_args(), env={"SNSD_TEST_JOB_SECONDS": "0.05"}).start()
    accepted, lock = set(), threading.Lock()

    def one(i):
        message_id = f"live-{i}"
        status, body, _ = daemon.post(notification(s3_message(f"live/{i}.csv"), message_id))
        if status == 200 and json.loads(body)["status"] == "accepted":
            with lock:
                accepted.add(message_id)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(400)]
        daemon.wait_for(lambda: len(accepted) >= 40, what="40 messages accepted")
        daemon.signal(signal.SIGKILL)
        for future in futures:
            future.result()
    assert daemon.wait() == -signal.SIGKILL
    assert 40 <= len(accepted) < 400  # killed while messages were still arriving

    daemon.start()
    try:
        daemon.wait_for(
            lambda: accepted <= {line["message_id"] for line in daemon.result_lines()},
            what="a result for every acknowledged message",
        )
        assert rows(daemon, "SELECT COUNT(*) FROM dead_letters") == [(0,)]
        lines = daemon.result_lines()
        print(f"SIGKILL mid-POST: {len(accepted)} of 400 acknowledged, {len(lines)} result lines after the restart")
        for message_id in sorted(accepted)[:20]:
            i = message_id.removeprefix("live-")
            status, body, _ = daemon.post(notification(s3_message(f"live/{i}.csv"), message_id))
            assert (status, json.loads(body)) == (200, {"status": "duplicate"})
    finally:
        assert daemon.stop() == 0


@process
def test_a_drain_turns_unready_refuses_new_messages_and_lets_running_jobs_finish(tmp_path):
    daemon = Daemon(
        tmp_path, *daemon_args("--drain-timeout", "30", "--workers", "1"), env={"SNSD_TEST_JOB_SECONDS": "1.5"}
    ).start()
    assert daemon.get("/readyz")[0] == 200
    accepted = burst(daemon, 3, "drain")
    assert len(accepted) == 3
    daemon.wait_for(lambda: jobs_running(daemon) == 1, what="one job running")
    daemon.signal(signal.SIGTERM)

    status, body, _ = daemon.wait_for(
        lambda: (answer := daemon.get("/readyz"))[0] == 503 and answer, what="/readyz to turn unready"
    )
    assert json.loads(body)["draining"] is True
    status, _, headers = daemon.post(notification(s3_message("late.csv"), "late"))
    assert status == 503 and headers.get("Retry-After")
    assert daemon.wait(timeout=20) == 0
    # The running job finished inside the drain; the two never started stayed spooled.
    assert len(daemon.result_lines()) == 1
    assert rows(daemon, "SELECT COUNT(*) FROM records") == [(2,)]
    assert rows(daemon, "SELECT COUNT(*) FROM messages WHERE message_id = 'late'") == [(0,)]

    daemon.env["SNSD_TEST_JOB_SECONDS"] = "0"
    daemon.start()
    try:
        daemon.wait_for(lambda: len(daemon.result_lines()) == 3, what="the spooled records to run")
        assert {line["message_id"] for line in daemon.result_lines()} == accepted
    finally:
        assert daemon.stop() == 0


@process
def test_a_drain_timeout_exits_at_the_timeout_and_leaves_running_jobs_spooled_for_the_next_start(tmp_path):
    daemon = Daemon(
        tmp_path, *daemon_args("--drain-timeout", "0.5", "--workers", "2"), env={"SNSD_TEST_JOB_SECONDS": "5"}
    ).start()
    accepted = burst(daemon, 3, "long")
    daemon.wait_for(lambda: jobs_running(daemon) == 2, what="two jobs running")
    signalled = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0
    elapsed = time.monotonic() - signalled
    assert 0.5 <= elapsed < 3.0, elapsed  # the timeout, not the 5 s the jobs wanted
    assert "drain timed out with 2 jobs running; they stay spooled" in daemon.output()
    assert daemon.result_lines() == []
    assert rows(daemon, "SELECT COUNT(*) FROM records") == [(3,)]
    daemon.env["SNSD_TEST_JOB_SECONDS"] = "0"
    daemon.start()
    try:
        daemon.wait_for(
            lambda: {line["message_id"] for line in daemon.result_lines()} == accepted,
            what="the interrupted jobs to run again",
        )
        # The interrupted ones ran a second time, and say so.
        assert sorted(line["attempt"] for line in daemon.result_lines()) == [1, 2, 2]
    finally:
        assert daemon.stop() == 0


@process
def test_an_in_memory_spool_logs_unfinished_records_as_critical_dead_letters_at_shutdown(tmp_path):
    daemon = Daemon(
        tmp_path, *daemon_args("--drain-timeout", "0.2", "--workers", "1"), env={"SNSD_TEST_JOB_SECONDS": "3"}
    )
    daemon.args[daemon.args.index("--spool") + 1] = ":memory:"
    daemon.start()
    accepted = burst(daemon, 4, "mem")
    assert len(accepted) == 4
    daemon.wait_for(lambda: jobs_running(daemon) == 1, what="one job running")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0
    output = daemon.output()
    critical = [line for line in output.splitlines() if "#critical]" in line]
    logged = {m for m in accepted if any(f" of {m} not done at shutdown" in line for line in critical)}
    with_result = {line["message_id"] for line in daemon.result_lines()}
    # Nothing silently lost: the running one and the three never started are all in the log.
    assert logged | with_result == accepted and len(logged) == 4 - len(with_result) >= 3
    assert "the in-memory spool cannot keep them" in output
    assert not daemon.spool.exists()


@process
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
        assert daemon.admin("POST", "/breaker/open")[0] == 200
        for i in range(5):
            status, body, _ = daemon.post(notification(s3_message(f"held/{i}.csv"), f"held-{i}"))
            assert (status, json.loads(body)["status"]) == (200, "spooled")
        status, body, headers = daemon.post(notification(s3_message("held/5.csv"), "held-5"))
        assert status == 503 and int(headers.get("Retry-After")) > 0
        assert "too many pending" in json.loads(body)["error"]
        # Nothing recorded from the refused message; the five held ones wait in the spool.
        assert rows(daemon, "SELECT COUNT(*) FROM messages WHERE message_id = 'held-5'") == [(0,)]
        assert rows(daemon, "SELECT COUNT(*) FROM records") == [(5,)]
        assert daemon.result_lines() == []
        assert daemon.admin("POST", "/breaker/reset")[0] == 200
        daemon.wait_for(lambda: len(daemon.result_lines()) == 5, what="the held records to run")
        assert {line["message_id"] for line in daemon.result_lines()} == {f"held-{i}" for i in range(5)}
        # The refused message recorded nothing, so SNS's retry is accepted, not a duplicate.
        status, body, _ = daemon.post(notification(s3_message("held/5.csv"), "held-5"))
        assert (status, json.loads(body)["status"]) == (200, "accepted")
        daemon.wait_for(lambda: len(daemon.result_lines()) == 6, what="the retried message's result")
    finally:
        assert daemon.stop() == 0


@process
def test_duplicates_are_recognised_after_a_restart(tmp_path):
    daemon = Daemon(tmp_path, "--no-verify-signatures", "--job", "snsd_test_jobs:echo").start()
    body = notification(s3_message("once.csv"), "only-once")
    assert json.loads(daemon.post(body)[1])["status"] == "accepted"
    daemon.wait_for(lambda: daemon.result_lines(), what="the result")
    assert daemon.stop() == 0
    daemon.start()
    try:
        assert json.loads(daemon.post(body)[1]) == {"status": "duplicate"}
        # A later message's result shows the daemon has worked since: the duplicate ran nothing.
        assert json.loads(daemon.post(notification(s3_message("next.csv"), "next"))[1])["status"] == "accepted"
        daemon.wait_for(lambda: len(daemon.result_lines()) == 2, what="the next result")
        assert [line["message_id"] for line in daemon.result_lines()] == ["only-once", "next"]
    finally:
        assert daemon.stop() == 0


def admin(daemon, *argv):
    return subprocess.run(
        [ADMIN, "--spool", str(daemon.spool), *argv],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@process
def test_dead_letters_are_replayed_by_snsd_admin_while_the_daemon_runs(tmp_path):
    daemon = Daemon(tmp_path, "--no-verify-signatures", "--job", "snsd_test_jobs:missing").start()
    try:
        accepted = burst(daemon, 3, "dead")
        daemon.wait_for(lambda: rows(daemon, "SELECT COUNT(*) FROM dead_letters") == [(3,)], what="three dead letters")
        assert {m for (m,) in rows(daemon, "SELECT message_id FROM dead_letters")} == accepted

        exported = admin(daemon, "dead-letters", "export")
        assert exported.returncode == 0, exported.stderr
        letters = [json.loads(line) for line in exported.stdout.splitlines()]
        assert {d["envelope"]["MessageId"] for d in letters} == accepted
        assert {(d["reason"], d["attempts"]) for d in letters} == {("job_error", 1)}
        assert all(d["error"].startswith("no such object b/dead/") for d in letters)

        # The same failing job, through the daemon's own result file: kept, one more attempt.
        sink = ("--dry-run", "--results", str(daemon.results))
        again = admin(daemon, "dead-letters", "replay", "--job", "snsd_test_jobs:missing", *sink)
        assert again.returncode == 1 and "0 resolved, 3 failed again" in again.stdout, again.stderr
        assert rows(daemon, "SELECT attempts FROM dead_letters") == [(2,)] * 3

        fixed = admin(daemon, "dead-letters", "replay", "--job", "snsd_test_jobs:echo", *sink)
        assert fixed.returncode == 0 and "3 resolved, 0 failed again" in fixed.stdout, fixed.stderr
        assert rows(daemon, "SELECT COUNT(*) FROM dead_letters") == [(0,)]
        ok = [line for line in daemon.result_lines() if line["status"] == "ok"]
        assert {line["message_id"] for line in ok} == accepted
        assert {line["attempt"] for line in ok} == {3}

        # The daemon kept working alongside: a new failure is a new dead letter.
        assert daemon.post(notification(s3_message("after.csv"), "after"))[0] == 200
        daemon.wait_for(lambda: rows(daemon, "SELECT message_id FROM dead_letters") == [("after",)], what="it")
        stats = admin(daemon, "spool", "stats")
        assert "dead letters: 1\n  job_error: 1" in stats.stdout and "after" in stats.stdout
    finally:
        assert daemon.stop() == 0


@pytest_twisted.ensureDeferred
async def test_a_claim_that_lands_after_a_drain_began_starts_nothing(tmp_path):
    """In process, with the real spool and reactor: a drain that finds no job running must not see
    one start afterwards (a claim was already queued), or the daemon's shutdown would wait for
    it past the drain timeout and lose its completion."""
    from tests.test_dispatcher import Harness

    started = threading.Event()
    h = Harness(tmp_path, lambda record: started.set(), workers=1)
    await h.start()
    await h.submit("m-1", "a")  # spooled; its claim is queued for the next group commit
    assert await h.dispatcher.drain(5) is True
    await h.spool.counts()  # operations run in order: the claim has landed
    assert h.dispatcher.jobs_running == 0 and not started.is_set()
    assert (await h.spool.counts())["records"] == 1  # still spooled for the next start
    await h.stop()
