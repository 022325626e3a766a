"""snsd-admin: listing, exporting and replaying dead letters of a real spool file."""

import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from snsd.admin import main
from snsd.spool import SQLiteSpool
from tests.process_helpers import JOBS_SOURCE
from tests.test_spool import envelope, records
from tests.trust_helpers import result_of

# 2023-11-14T22:13:20Z: dead letters get a recognisable time, well before any replay.
NOW = 1_700_000_000.0


@pytest.fixture
def spool_path(tmp_path, monkeypatch):
    """A spool with three dead letters (two job errors, one breaker skip) and one pending record."""
    (tmp_path / "snsd_test_jobs.py").write_text(JOBS_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in (
        "SNSD_DRY_RUN",
        "SNSD_JOB",
        "SNSD_RULES",
        "SNSD_RESULTS_BUCKET",
        "SNSD_RESULTS_PATH",
        "SNSD_SPOOL_PATH",
    ):
        monkeypatch.delenv(name, raising=False)
    path = str(tmp_path / "spool.sqlite3")
    clock = Clock()
    clock.advance(NOW)
    spool = SQLiteSpool(None, path, clock=clock, inline=True)
    result_of(spool.open())
    ids = result_of(spool.add(envelope("m-1"), records("a.csv", "b.csv", message_id="m-1")))
    result_of(spool.claim(0, 10))
    for record_id in ids:
        result_of(spool.dead_letter(record_id, "job_error", "s3_not_found: gone"))
    clock.advance(60)
    result_of(spool.add_dead_letters(envelope("m-2"), records("c.csv", message_id="m-2"), "breaker_open"))
    clock.advance(60)
    result_of(spool.add(envelope("m-3"), records("d.csv", message_id="m-3")))
    result_of(spool.close())
    return path


def run(*argv):
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def dead_letters(path):
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT id, reason, attempts, error, failed_at FROM dead_letters ORDER BY id").fetchall()
    finally:
        conn.close()


def table(text):
    """The rows of ``list``'s table, split on runs of two spaces, header first."""
    import re

    lines = text.splitlines()
    return [re.split(r"\s{2,}", line.strip()) for line in lines[:-1]], lines[-1]


def test_list_is_a_table_of_id_message_object_reason_error_attempts_and_time(spool_path):
    code, text = run("--spool", spool_path, "dead-letters", "list")
    assert code == 0
    rows, summary = table(text)
    assert rows[0] == ["id", "message id", "object", "reason", "error", "attempts", "failed at"]
    assert rows[1:] == [
        ["1", "m-1", "s3://b/a.csv", "job_error", "s3_not_found: gone", "1", "2023-11-14T22:13:20Z"],
        ["2", "m-1", "s3://b/b.csv", "job_error", "s3_not_found: gone", "1", "2023-11-14T22:13:20Z"],
        ["3", "m-2", "s3://b/c.csv", "breaker_open", "-", "0", "2023-11-14T22:14:20Z"],
    ]
    assert summary == "3 dead letters"


def test_list_filters_by_reason_id_and_limit(spool_path):
    rows, summary = table(run("--spool", spool_path, "dead-letters", "list", "--reason", "breaker_open")[1])
    assert [row[0] for row in rows[1:]] == ["3"] and summary == "1 dead letter"
    rows, _ = table(run("--spool", spool_path, "dead-letters", "list", "--id", "1", "3")[1])
    assert [row[0] for row in rows[1:]] == ["1", "3"]
    rows, _ = table(run("--spool", spool_path, "dead-letters", "list", "--limit", "2")[1])
    assert [row[0] for row in rows[1:]] == ["1", "2"]


def test_export_writes_the_record_and_original_envelope_as_json_lines(spool_path, tmp_path):
    output = tmp_path / "dead.jsonl"
    assert run("--spool", spool_path, "dead-letters", "export", "--output", str(output))[0] == 0
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["record"]["key"] for line in lines] == ["a.csv", "b.csv", "c.csv"]
    first = lines[0]
    assert first["envelope"]["MessageId"] == "m-1" and first["envelope"]["Type"] == "Notification"
    assert first["record"]["message_id"] == "m-1" and first["message_id"] == "m-1"
    assert (first["reason"], first["error"], first["attempts"]) == ("job_error", "s3_not_found: gone", 1)
    assert first["failed_at"] == "2023-11-14T22:13:20Z"


def test_export_to_standard_output_with_a_selection(spool_path):
    code, text = run("--spool", spool_path, "dead-letters", "export", "--output", "-", "--reason", "breaker_open")
    assert code == 0
    assert [json.loads(line)["record"]["key"] for line in text.splitlines()] == ["c.csv"]


def replay(spool_path, results, *selection, job="snsd_test_jobs:echo"):
    return run(
        "--spool",
        spool_path,
        "dead-letters",
        "replay",
        *selection,
        "--job",
        job,
        "--dry-run",
        "--results",
        str(results),
    )


def test_replay_that_succeeds_writes_results_and_removes_the_dead_letters(spool_path, tmp_path):
    results = tmp_path / "replayed.jsonl"
    code, text = replay(spool_path, results, "--reason", "job_error")
    assert code == 0, text
    assert "replayed 2: 2 resolved, 0 failed again" in text
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(line["key"], line["status"], line["message_id"], line["attempt"]) for line in lines] == [
        ("a.csv", "ok", "m-1", 2),
        ("b.csv", "ok", "m-1", 2),
    ]
    # The dispatcher's result line: the record, the job's result and the timing fields.
    assert lines[0]["result"] == {"echo": "a.csv", "size": None}
    assert {"started_at", "finished_at", "duration_ms", "worker", "error", "error_kind"} <= set(lines[0])
    assert [row[:2] for row in dead_letters(spool_path)] == [(3, "breaker_open")]


def test_replay_that_fails_again_keeps_the_dead_letter_with_one_more_attempt_the_new_error_and_time(
    spool_path, tmp_path
):
    results = tmp_path / "r.jsonl"
    code, text = replay(spool_path, results, "--id", "1", "3", job="snsd_test_jobs:missing")
    assert code == 1 and "replayed 2: 0 resolved, 2 failed again" in text
    rows = {row[0]: row for row in dead_letters(spool_path)}
    assert rows[1][2:4] == (2, "no such object b/a.csv") and rows[1][4] > NOW + 3600
    assert rows[3][2:4] == (1, "no such object b/c.csv")
    assert rows[2][2:] == (1, "s3_not_found: gone", NOW)  # not selected: untouched
    # A failure is still a result line, as in the daemon.
    assert [json.loads(line)["status"] for line in results.read_text().splitlines()] == ["error", "error"]


def test_replay_with_a_sink_that_cannot_open_is_a_clear_error_and_changes_nothing(spool_path, tmp_path, capsys):
    before = dead_letters(spool_path)
    code, _ = replay(spool_path, tmp_path / "no-such-dir" / "r.jsonl")
    assert code == 2 and "--results" in (err := capsys.readouterr().err) and "no-such-dir does not exist" in err
    assert dead_letters(spool_path) == before


def test_replay_takes_the_daemons_option_errors(spool_path, capsys):
    code, _ = run("--spool", spool_path, "dead-letters", "replay", "--job", "snsd_test_jobs:echo")
    assert code == 2  # neither --dry-run nor --results-bucket
    assert "--results-bucket is required" in capsys.readouterr().err


def test_spool_given_after_the_command_is_the_one_used(spool_path, tmp_path):
    results = tmp_path / "r.jsonl"
    code, text = run(
        "dead-letters", "replay", "--spool", spool_path, "--id", "3", "--job", "snsd_test_jobs:echo", "--dry-run",
        "--results", str(results),
    )  # fmt: skip
    assert code == 0 and "1 resolved" in text
    assert [row[0] for row in dead_letters(spool_path)] == [1, 2]


def test_spool_path_from_the_environment(spool_path, monkeypatch):
    monkeypatch.setenv("SNSD_SPOOL_PATH", spool_path)
    code, text = run("dead-letters", "list")
    assert code == 0 and text.endswith("3 dead letters\n")


def test_stats_counts_pending_records_dead_letters_by_reason_and_recent_message_ids(spool_path):
    code, text = run("--spool", spool_path, "spool", "stats")
    assert code == 0
    assert "records owed a result: 1\n  oldest spooled at 2023-11-14T22:15:20Z" in text
    assert "dead letters: 3\n  breaker_open: 1\n  job_error: 2" in text
    recent = text.split("most recent message ids (up to 10):\n")[1].splitlines()
    assert recent == ["  2023-11-14T22:15:20Z  m-3", "  2023-11-14T22:14:20Z  m-2", "  2023-11-14T22:13:20Z  m-1"]


def test_a_missing_spool_is_a_clear_error(tmp_path, capsys):
    assert main(["--spool", str(tmp_path / "nope.sqlite3"), "spool", "stats"]) == 2
    assert "no spool at" in capsys.readouterr().err


def test_an_in_memory_spool_cannot_be_opened_from_outside(capsys):
    assert main(["--spool", ":memory:", "dead-letters", "list"]) == 2
    assert "nothing to open" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", b"this is not sqlite at all, not even close" * 20], ids=["empty", "garbage"])
def test_a_file_that_is_not_a_spool_is_a_clear_error(tmp_path, capsys, content):
    path = tmp_path / "other.sqlite3"
    path.write_bytes(content)
    assert main(["--spool", str(path), "dead-letters", "list"]) == 2
    err = capsys.readouterr().err
    assert "not an snsd spool" in err or "cannot read" in err


def test_the_console_script_and_python_m_run_the_same_command(spool_path):
    script = Path(sys.executable).with_name("snsd-admin")
    for command in ([str(script)], [sys.executable, "-m", "snsd.admin"]):
        done = subprocess.run(
            [*command, "--spool", spool_path, "spool", "stats"], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        assert "dead letters: 3" in done.stdout
