"""Running one job and describing its outcome: the one result-line format, shared by the
dispatcher and ``snsd-admin dead-letters replay``."""

from __future__ import annotations

import threading
import time

from snsd.records import S3ObjectRecord
from snsd.timestamps import iso


def run_job(job, record: S3ObjectRecord, attempt: int) -> dict:
    """Run ``job(record)`` and return its result line; an exception becomes ``status: error``."""
    started, clock = time.time(), time.monotonic()
    line = record.to_dict()
    try:
        result, error, error_kind, status = job(record), None, None, "ok"
    except Exception as e:
        result, error, error_kind, status = None, str(e) or type(e).__name__, error_kind_of(e), "error"
    # The times say when (wall clock); the duration comes from the monotonic clock, which a
    # wall-clock step (NTP, a VM resumed) cannot make negative or inflate.
    duration, finished = time.monotonic() - clock, time.time()
    line.update(
        status=status,
        result=result,
        error=error,
        error_kind=error_kind,
        started_at=iso(started),
        finished_at=iso(finished),
        duration_ms=round(duration * 1000, 3),
        worker=threading.current_thread().name,
        attempt=attempt,
    )
    return line


def verdict_of(line: dict) -> str:
    result = line.get("result")
    return str(result.get("verdict", "none")) if isinstance(result, dict) else "none"


def error_kind_of(error: Exception) -> str:
    return getattr(error, "kind", None) or type(error).__name__
