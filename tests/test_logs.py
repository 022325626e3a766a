"""Logs: one JSON object per line for shippers, readable text by default, and no line per
message under a burst at the default level."""

from __future__ import annotations

import io
import json
import signal
import subprocess

import pytest
from twisted.application.service import Application
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, LogLevel

from snsd.logs import (
    ActivitySummary,
    JSONLinesObserver,
    Throttle,
    TwistdLogging,
    drop_levels_below,
    event_as_dict,
    level_from_env,
    make_observer,
)
from tests.process_helpers import LISTENING, TWISTD, Daemon, notification, poll_until
from tests.trust_helpers import notification as sns_notification
from tests.trust_helpers import signed
from tests.web_harness import Snsd, s3_message


def lines_of(out: io.StringIO) -> list[dict]:
    text = out.getvalue()
    assert text.endswith("\n") or not text
    return [json.loads(line) for line in text.splitlines()]


def test_a_json_line_has_time_level_namespace_message_and_the_event_fields():
    out = io.StringIO()
    log = Logger(namespace="snsd.dispatcher", observer=JSONLinesObserver(out))
    log.warn(
        "job failed {bucket}/{key}: {error}",
        bucket="incoming",
        key="a b.csv",
        error="no such object",
        message_id="m-1",
        duration_ms=12.5,
    )
    [line] = lines_of(out)
    assert line["level"] == "warn"
    assert line["namespace"] == "snsd.dispatcher"
    assert line["message"] == "job failed incoming/a b.csv: no such object"
    fields = (line["bucket"], line["key"], line["message_id"], line["duration_ms"])
    assert fields == ("incoming", "a b.csv", "m-1", 12.5)
    assert line["time"].endswith("Z") and line["time"][10] == "T"
    assert not any(key.startswith("log_") for key in line)


def test_a_failure_carries_its_traceback_text():
    out = io.StringIO()
    log = Logger(namespace="snsd.web", observer=JSONLinesObserver(out))
    try:
        {}["missing"]
    except KeyError:
        log.failure("unexpected error answering {path}", path="/")
    [line] = lines_of(out)
    assert line["level"] == "critical"
    assert line["message"] == "unexpected error answering /"
    assert line["error_type"] == "KeyError"
    assert "Traceback" in line["traceback"] and "KeyError: 'missing'" in line["traceback"]


def test_fields_that_are_not_json_become_text_and_reserved_names_are_kept_apart():
    class Peer:
        def __str__(self):
            return "peer-1"

    event = {
        "log_format": "from {peer}",
        "log_level": LogLevel.info,
        "log_namespace": "x",
        "log_time": 0.0,
        "peer": Peer(),
        "level": "mine",
        "counts": {"200": 3},
    }
    line = event_as_dict(event)
    assert line["peer"] == "peer-1" and line["message"] == "from peer-1"
    assert line["level"] == "info" and line["field_level"] == "mine"
    assert line["counts"] == {"200": 3}
    assert json.loads(json.dumps(line)) == line


def test_each_event_is_exactly_one_line_even_with_newlines_in_it():
    out = io.StringIO()
    log = Logger(namespace="t", observer=JSONLinesObserver(out))
    log.info("two\nlines {x}", x="and\nmore")
    assert out.getvalue().count("\n") == 1
    assert lines_of(out)[0]["message"] == "two\nlines and\nmore"


def test_throttle_passes_a_few_of_a_kind_then_one_summary_per_interval():
    seen = []
    clock = Clock()
    throttle = Throttle(seen.append, burst=3, clock=clock)
    log = Logger(namespace="snsd.dispatcher", observer=throttle)
    for i in range(100):
        log.warn("job failed {key}", key=f"k{i}")
    log.info("breaker {state}", state="open")  # another kind: its own budget
    assert [e.get("key") for e in seen] == ["k0", "k1", "k2", None]

    throttle.flush(10)
    [summary] = seen[4:]
    assert summary["suppressed"] == 97
    assert summary["log_level"] == LogLevel.warn and summary["log_namespace"] == "snsd.dispatcher"
    assert "job failed k99" in event_as_dict(summary)["message"]

    throttle.flush(10)  # nothing cut short since: no summary
    assert len(seen) == 5
    log.warn("job failed {key}", key="again")  # a new interval: passes again
    assert seen[-1]["key"] == "again"


def test_throttle_gives_each_reason_its_own_budget_and_never_cuts_critical_or_stderr():
    seen = []
    throttle = Throttle(seen.append, burst=2, clock=Clock())
    web = Logger(namespace="snsd.web", observer=throttle)
    for _ in range(5):
        web.info("refused {status} {reason}", status=400, reason="body is not JSON")
    web.info("refused {status} {reason}", status=403, reason="raw message delivery is not accepted")
    assert [e["reason"] for e in seen] == ["body is not JSON"] * 2 + ["raw message delivery is not accepted"]

    throttle.flush(10)
    [summary] = seen[3:]
    assert summary["suppressed"] == 3 and "body is not JSON" in event_as_dict(summary)["message"]

    seen.clear()
    dispatcher = Logger(namespace="snsd.dispatcher", observer=throttle)
    for i in range(5):
        dispatcher.critical("record {record_id} lost", record_id=i)
    stderr = Logger(namespace="stderr", observer=throttle)
    for i in range(5):
        stderr.error("{log_io}", log_io=f"traceback line {i}")
    assert [e.get("record_id") for e in seen[:5]] == [0, 1, 2, 3, 4]
    assert [e.get("log_io") for e in seen[5:]] == [f"traceback line {i}" for i in range(5)]


def test_reasons_from_requests_cannot_multiply_the_budget():
    from snsd.logs import MAX_REASONS

    seen = []
    throttle = Throttle(seen.append, burst=5, clock=Clock())
    web = Logger(namespace="snsd.web", observer=throttle)
    for i in range(1000):  # a bad Type per request: "unknown message type 'X17'"
        web.info("refused {status} {reason}", status=400, reason=f"unknown message type 'X{i}'")
    assert len(seen) == MAX_REASONS + 5  # one line for each of the first reasons, 5 for all the rest
    throttle.flush(10)
    assert seen[-1]["suppressed"] == 1000 - MAX_REASONS - 5


def test_debug_is_dropped_at_the_default_level_and_shown_when_asked():
    out = io.StringIO()
    observer, _ = make_observer("json", out, LogLevel.info)
    log = Logger(namespace="snsd.web", observer=observer)
    log.debug("accepted {message_id}", message_id="m-1")
    log.info("ready")
    assert [line["message"] for line in lines_of(out)] == ["ready"]

    out = io.StringIO()
    observer, _ = make_observer("json", out, level_from_env({"SNSD_LOG_LEVEL": "debug"}))
    Logger(namespace="snsd.web", observer=observer).debug("accepted {message_id}", message_id="m-1")
    assert lines_of(out)[0]["message_id"] == "m-1"


def test_the_per_message_logger_skips_levels_the_configured_filter_drops():
    from snsd import logs

    seen = []
    log = logs.Logger(namespace="snsd.web", observer=seen.append)
    try:
        logs.drop_levels_below(LogLevel.info)
        log.debug("accepted {message_id}", message_id="m-1")
        log.info("ready")
        assert [event["log_format"] for event in seen] == ["ready"]
    finally:
        logs.drop_levels_below(None)
    log.debug("accepted {message_id}", message_id="m-2")  # unconfigured (tests): everything passes
    assert seen[-1]["message_id"] == "m-2"


def test_text_format_stays_readable():
    out = io.StringIO()
    observer, _ = make_observer("text", out)
    Logger(namespace="snsd.daemon", observer=observer).info("listening on {host}:{port}", host="127.0.0.1", port=80)
    text = out.getvalue()
    assert text.endswith("listening on 127.0.0.1:80\n") and "[snsd.daemon#info]" in text
    with pytest.raises(ValueError):
        json.loads(text)


def test_activity_summary_reports_what_the_interval_answered_and_ran(tmp_path):
    snsd = Snsd(tmp_path)
    out = io.StringIO()
    summary = ActivitySummary(Logger(namespace="snsd.activity", observer=JSONLinesObserver(out)))
    for i in range(7):
        snsd.post(signed(sns_notification(s3_message(f"k{i}.csv"))))
    snsd.post(b"not json")
    fields = summary.tick(10)
    assert fields["requests"] == 8 and fields["requests_by_status"] == {"200": 7, "400": 1}
    assert fields["jobs"] == 7 and fields["jobs_by_outcome"] == {"ok": 7}
    [line] = lines_of(out)
    assert line["requests"] == 8 and line["message"].startswith("last 10.0s: 8 requests (200: 7, 400: 1)")
    assert summary.tick(10) is None  # idle interval: silent
    assert len(lines_of(out)) == 1


@pytest.fixture
def twistd_logging():
    """A TwistdLogging made the service of a fresh twistd application, as twistd does."""
    made = []

    def make(log_format="json", **twistd_options):
        application = Application("snsd")
        clock = Clock()
        top = TwistdLogging(log_format, twistd_options={"nodaemon": True, **twistd_options}, clock=clock)
        top.setServiceParent(application)
        made.append(top)
        return application, top, clock

    yield make
    drop_levels_below(None)  # setServiceParent set the process-wide level


def test_twistd_finds_snsds_observer_on_the_application_writing_where_logfile_says(twistd_logging, tmp_path):
    path = tmp_path / "snsd.log"
    application, _, _ = twistd_logging(logfile=str(path))
    observer = application.getComponent(ILogObserver)  # where twistd's AppLogger.start looks
    Logger(namespace="snsd.daemon", observer=observer).info("listening on {host}:{port}", host="h", port=1)
    Logger(namespace="snsd.web", observer=observer).debug("accepted {message_id}", message_id="m")  # below info
    [line] = [json.loads(text) for text in path.read_text().splitlines()]
    assert line["message"] == "listening on h:1" and line["port"] == 1


def test_an_applications_own_observer_and_syslog_keep_twistds_choice(twistd_logging):
    own = Application("tac")
    own.setComponent(ILogObserver, print)
    TwistdLogging("json", twistd_options={"nodaemon": True}, clock=Clock()).setServiceParent(own)
    assert own.getComponent(ILogObserver) is print
    application, _, _ = twistd_logging(syslog=True)
    assert application.getComponent(ILogObserver) is None  # twistd builds its syslog observer


def test_every_interval_the_throttle_reports_what_it_cut_and_once_more_after_the_children_stop(
    twistd_logging, tmp_path
):
    path = tmp_path / "snsd.log"
    application, top, clock = twistd_logging(logfile=str(path))
    log = Logger(namespace="snsd.dispatcher", observer=application.getComponent(ILogObserver))
    top.startService()
    for i in range(7):
        log.warn("job failed {key}", key=f"k{i}")
    assert len(path.read_text().splitlines()) == 5
    clock.advance(10)
    summary = json.loads(path.read_text().splitlines()[-1])
    assert summary["suppressed"] == 2 and summary["interval"] == 10
    for i in range(6):
        log.warn("job failed {key}", key=f"again-{i}")
    clock.advance(4)
    top.stopService()  # the last partial interval
    summary = json.loads(path.read_text().splitlines()[-1])
    assert summary["suppressed"] == 1 and summary["interval"] == 4


@pytest.mark.process
def test_twistd_logfile_gets_snsds_json_lines(tmp_path):
    path = tmp_path / "snsd.log"
    args = ["--port", "tcp:0:interface=127.0.0.1", "--admin-port", "tcp:0:interface=127.0.0.1"]
    args += ["--dry-run", "--spool", ":memory:", "--log-format", "json"]
    process = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "--logfile", str(path), "snsd", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        poll_until(
            lambda: process.poll() is not None or (path.exists() and LISTENING.search(path.read_bytes())),
            60,
            "the listening line",
        )
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=60)
    lines = [json.loads(text) for text in path.read_text().splitlines()]  # every line parses
    assert any(line["message"].startswith("listening on") for line in lines)
    assert stdout == b""


@pytest.mark.process
def test_twistd_log_format_json_writes_only_json_lines_and_no_line_per_message(tmp_path):
    daemon = Daemon(
        tmp_path, "--no-verify-signatures", "--job", "snsd_test_jobs:missing", "--log-format", "json"
    ).start()
    try:
        for i in range(40):
            status, _, _ = daemon.post(notification(s3_message(f"gone-{i}.csv"), f"msg-{i}"))
            assert status == 200
        daemon.wait_for(lambda: len(daemon.result_lines()) >= 5, what="the failing jobs")
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    lines = [json.loads(text) for text in daemon.output().splitlines()]  # every line parses
    assert all({"time", "level", "namespace", "message"} <= line.keys() for line in lines)
    ready = next(line for line in lines if line["message"].startswith("listening on"))
    assert ready["namespace"] == "snsd.daemon" and isinstance(ready["port"], int)
    failed = [line for line in lines if line["message"].startswith("job failed")]
    assert 1 <= len(failed) <= 5
    assert failed[0]["bucket"] == "incoming" and failed[0]["message_id"].startswith("msg-")
    # 40 messages, 35 of them skipped by the open breaker: a few lines each, then a summary.
    skipped = [line for line in lines if line["message"].startswith("breaker open: skipped")]
    assert len(skipped) <= 5
    assert any(line.get("suppressed") for line in lines)
    activity = [line for line in lines if line["namespace"] == "snsd.activity"]
    assert sum(line["requests"] for line in activity) == 40
    assert len(lines) < 40


@pytest.mark.process
def test_twistd_default_text_has_no_line_per_accepted_message(tmp_path):
    daemon = Daemon(tmp_path, "--no-verify-signatures", "--job", "snsd_test_jobs:echo").start()
    try:
        for i in range(30):
            assert daemon.post(notification(s3_message(f"ok-{i}.csv"), f"ok-{i}"))[0] == 200
        daemon.wait_for(lambda: len(daemon.result_lines()) == 30, what="30 results")
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    output = daemon.output()
    # Verification is off, so each message is warned about: five lines, then one summary.
    per_message = [line for line in output.splitlines() if " ok-" in line]
    assert len(per_message) <= 6 and "25 more like 'signature NOT verified" in output
    assert "accepted ok-" not in output
    assert "30 requests (200: 30), 30 jobs (ok: 30)" in output
    assert output.count("\n") < 30
