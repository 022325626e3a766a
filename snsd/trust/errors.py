"""The one exception every trust check raises.

It lives in its own module so that :mod:`snsd.trust.signing` (imported by the load tool)
and :mod:`snsd.trust.hosts` can raise it without importing Twisted-heavy modules.
"""

from __future__ import annotations


class TrustError(Exception):
    """A message (or one of its URLs) failed a trust check.

    ``status`` is the HTTP status the endpoint should answer with: 4xx when the message
    itself is at fault (SNS will not fix it by retrying), 5xx when snsd could not finish
    checking it (SNS retries).  ``reason`` is a short snake_case machine reason, used as the
    ``reason`` label of ``snsd_signature_failures_total`` and in logs.
    """

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.status = status
        self.reason = reason
        self.detail = detail

    def __repr__(self) -> str:
        return f"TrustError(status={self.status!r}, reason={self.reason!r}, detail={self.detail!r})"
