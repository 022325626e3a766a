"""snsd-admin: listing, exporting and replaying dead letters of a real spool file."""

import io
import json
import sqlite3

import pytest

from snsd.admin import main
from tests.process_helpers import JOBS_SOURCE
from tests.test_spool import envelope, records
from tests.trust_helpers import result_of


@pytest.fixture
def spool_path(tmp_path, monkeypatch):
    """A spool with three dead letters: two job errors and one breaker skip."""
    from twisted.internet.task import Clock

    from snsd.spool import SQLiteSpool

    (tmp_path / "snsd_test_jobs.py").write_text(JOBS_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("SNSD_DRY_RUN", "SNSD_JOB", "SNSD_RULES", "SNSD_RESULTS_BUCKET", "SNSD_RESULTS_PATH"):
        monkeypatch.delenv(name, raising=False)
    path = str(tmp_path / "spool.sqlite3")
    spool = SQLiteSpool(None, path, clock=Clock(), inline=True)
    result_of(spool.open())
    ids = result_of(spool.add(envelope("m-1"), records("a.csv", "b.csv", message_id="m-1")))
    result_of(spool.claim(0, 10))
    for record_id in ids:
        result_of(spool.dead_letter(record_id, "job_error", "s3_not_found: gone"))
    result_of(spool.add_dead_letters(envelope("m-2"), records("c.csv", message_id="m-2"), "breaker_open"))
    result_of(spool.close())
    return path


def run(*argv):
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def test_list_shows_every_dead_letter_and_filters_by_reason(spool_path):
    code, text = run("--spool", spool_path, "dead-letters", "list")
    assert code == 0
    assert "s3://b/a.csv" in text and "s3://b/c.csv" in text and "3 dead letters" in text
    code, text = run("--spool", spool_path, "dead-letters", "list", "--reason", "breaker_open")
    assert "s3://b/c.csv" in text and "a.csv" not in text and "1 dead letters" in text


def test_export_writes_the_record_and_original_envelope_as_json_lines(spool_path, tmp_path):
    output = tmp_path / "dead.jsonl"
    assert run("--spool", spool_path, "dead-letters", "export", "--output", str(output))[0] == 0
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["record"]["key"] for line in lines] == ["a.csv", "b.csv", "c.csv"]
    assert lines[0]["envelope"]["MessageId"] == "m-1" and lines[0]["reason"] == "job_error"
    assert lines[0]["error"] == "s3_not_found: gone" and lines[0]["failed_at"].endswith("Z")


def test_replay_that_succeeds_writes_results_and_removes_the_dead_letters(spool_path, tmp_path):
    results = tmp_path / "replayed.jsonl"
    code, text = run(
        "--spool",
        spool_path,
        "dead-letters",
        "replay",
        "--reason",
        "job_error",
        "--job",
        "snsd_test_jobs:echo",
        "--dry-run",
        "--results",
        str(results),
    )
    assert code == 0, text
    assert "2 resolved, 0 failed again" in text
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(line["key"], line["status"], line["message_id"]) for line in lines] == [
        ("a.csv", "ok", "m-1"),
        ("b.csv", "ok", "m-1"),
    ]
    remaining = sqlite3.connect(spool_path).execute("SELECT reason FROM dead_letters").fetchall()
    assert remaining == [("breaker_open",)]


def test_replay_that_fails_again_keeps_the_dead_letter_with_one_more_attempt(spool_path, tmp_path):
    code, text = run(
        "--spool",
        spool_path,
        "dead-letters",
        "replay",
        "--id",
        "3",
        "--job",
        "snsd_test_jobs:missing",
        "--dry-run",
        "--results",
        str(tmp_path / "r.jsonl"),
    )
    assert code == 1 and "0 resolved, 1 failed again" in text
    row = sqlite3.connect(spool_path).execute("SELECT attempts, error FROM dead_letters WHERE id = 3").fetchone()
    assert row == (1, "no such object b/c.csv")


def test_replay_takes_the_daemons_option_errors(spool_path):
    code, _ = run("--spool", spool_path, "dead-letters", "replay", "--job", "snsd_test_jobs:echo")
    assert code == 2  # neither --dry-run nor --results-bucket


def test_stats(spool_path):
    code, text = run("--spool", spool_path, "spool", "stats")
    assert code == 0
    assert "dead letters: 3" in text and "job_error: 2" in text and "breaker_open: 1" in text


def test_a_missing_spool_is_a_clear_error(tmp_path, capsys):
    assert main(["--spool", str(tmp_path / "nope.sqlite3"), "spool", "stats"]) == 2
    assert "no spool at" in capsys.readouterr().err
