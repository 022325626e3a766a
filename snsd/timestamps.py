"""Unix times as snsd writes them: ISO 8601 in UTC, with a ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(seconds: float, timespec: str = "milliseconds") -> str:
    """``1700000000.5`` -> ``2023-11-14T22:13:20.500Z``; ``timespec`` as ``datetime.isoformat`` takes it."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec=timespec).replace("+00:00", "Z")
