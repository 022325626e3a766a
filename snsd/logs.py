"""Logging setup: readable text by default, one JSON object per line with ``--log-format json``."""

from __future__ import annotations


def configure_logging(log_format: str) -> None:
    # Placeholder wiring point; the JSON observer is installed here (see observability work).
    return None
