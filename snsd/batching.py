"""How the dispatcher hands sub-millisecond jobs to the pool: in batches, one batch at a time.

Such jobs gain nothing from running side by side: under the GIL they cannot, and each extra
busy thread makes the reactor wait for the GIL.  Handed to the pool one by one they starve
instead: every hand-off costs the reactor a claim, a thread wake-up and a callback, and waits a
reactor turn, which under ingest load takes milliseconds.  So while recent jobs averaged under
``SHORT_JOB``, one pool call runs as many records as take about ``BATCH_SECONDS`` (at most
``BATCH_MAX``), one after another in one worker thread, and one such call runs at a time.  A
hand-off still running after ``LONG_JOB`` lifts the limit at once, so a slow job holds up only the
rest of its own batch.  Real data-quality jobs take far longer: one record per hand-off, every
worker busy.

A batch that is not full waits up to ``BATCH_WAIT`` for company, unless someone waits on a
record (``--ack after-job``, a drain) or the breaker is not closed: at low concurrency records
arrive one or two per reactor turn, and a pool call per record or two costs the reactor more than
the job.  Nobody sees the wait: SNS has its answer once the record is spooled.

The measurements behind each constant are in docs/performance.md ("What changed, and what it
bought"; "Admission, batching and hooks: A/B").
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime

SHORT_JOB = 0.001
BATCH_SECONDS = 0.005
BATCH_MAX = 64
BATCH_WAIT = 0.005
LONG_JOB = 0.01


class ShortJobBatches:
    """The dispatcher's sizing of hand-offs: how many run at once, how many records each takes,
    and whether a batch that is not full waits for company.

    ``wake`` (the dispatcher's pump) is called when a waiting batch stops waiting and when a
    running hand-off turns out long."""

    def __init__(self, clock: IReactorTime, wake: Callable[[], None], wait: float = BATCH_WAIT) -> None:
        self._clock = clock
        self._wake = wake
        self.wait = wait
        self._job_seconds: float | None = None  # moving average of job durations
        self._handed_off: dict[int, float] = {}  # hand-off -> when it went to the pool
        self._tokens = itertools.count()
        self._fill_until: float | None = None
        self._fill_timer = None
        self._watchdog = None

    @property
    def short(self) -> bool:
        """True while recent jobs averaged under SHORT_JOB."""
        return self._job_seconds is not None and self._job_seconds < SHORT_JOB

    @property
    def in_flight(self) -> int:
        """Hand-offs the pool has not given back."""
        return len(self._handed_off)

    def concurrency(self, workers: int) -> int:
        """How many hand-offs may run at once: ``workers``, or one while jobs are short."""
        return 1 if self.short else workers

    def size(self) -> int:
        """Records per hand-off: one, or while jobs are short, about BATCH_SECONDS' worth."""
        if not self.short:
            return 1
        return max(1, min(BATCH_MAX, int(BATCH_SECONDS / max(self._job_seconds, 1e-6))))

    def room(self, workers: int) -> int:
        """How many records the pool can take now."""
        return max(0, self.concurrency(workers) - self.in_flight) * self.size()

    def hold(self, not_full: bool, may_wait: bool) -> bool:
        """True: keep a batch that is not full back for now (``wake`` is called when it may go)."""
        if not_full and may_wait and self.wait and self.short:
            now = self._clock.seconds()
            if self._fill_until is None:
                self._fill_until = now + self.wait
                self._fill_timer = self._clock.callLater(self.wait, self._wake)
            if now < self._fill_until:
                return True
        self.stop_holding()
        return False

    def stop_holding(self) -> None:
        """No batch waits for company any more (a drain, or the batch went)."""
        self._fill_until = None
        if self._fill_timer is not None and self._fill_timer.active():
            self._fill_timer.cancel()
        self._fill_timer = None

    def handed_off(self) -> int:
        """A hand-off went to the pool; returns its token for :meth:`handed_back`."""
        token = next(self._tokens)
        self._handed_off[token] = self._clock.seconds()
        if self._watchdog is None and self.short:
            self._watchdog = self._clock.callLater(LONG_JOB, self._watch_for_long_jobs)
        return token

    def handed_back(self, token: int) -> None:
        self._handed_off.pop(token, None)

    def finished(self, seconds: float) -> None:
        """One job took ``seconds``."""
        self._job_seconds = seconds if self._job_seconds is None else 0.8 * self._job_seconds + 0.2 * seconds

    def _watch_for_long_jobs(self) -> None:
        self._watchdog = None
        now = self._clock.seconds()
        if any(now - since >= LONG_JOB for since in self._handed_off.values()):
            # A slow job among short ones: stop batching now, not when it finishes.
            self._job_seconds = max(self._job_seconds or 0.0, LONG_JOB)
            self._wake()
        elif self._handed_off and self.short:
            self._watchdog = self._clock.callLater(LONG_JOB, self._watch_for_long_jobs)
