"""The result line of one job run."""

import time

from snsd import results
from snsd.records import S3ObjectRecord
from snsd.results import run_job


def test_a_jobs_duration_is_measured_on_the_monotonic_clock_not_the_wall_clock(monkeypatch):
    wall = iter([1_700_000_100.0, 1_700_000_000.0])  # the wall clock steps back 100 s during the job
    monkeypatch.setattr(results.time, "time", lambda: next(wall))
    line = run_job(lambda record: {"verdict": "passed"}, S3ObjectRecord("b", "k"), 1)
    assert 0 <= line["duration_ms"] < 10_000
    assert line["started_at"] == "2023-11-14T22:15:00.000Z" and line["finished_at"] == "2023-11-14T22:13:20.000Z"


def test_a_failing_job_gives_an_error_line_with_its_kind():
    def job(record):
        raise FileNotFoundError("gone")

    before = time.monotonic()
    line = run_job(job, S3ObjectRecord("b", "k"), 2)
    assert (line["status"], line["error"], line["error_kind"]) == ("error", "gone", "FileNotFoundError")
    assert line["attempt"] == 2
    assert line["duration_ms"] <= (time.monotonic() - before) * 1000
