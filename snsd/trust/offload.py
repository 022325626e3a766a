"""Signature checks off the reactor thread, one hand-off per reactor turn.

cryptography lets go of the GIL while it does the RSA arithmetic, so a check made in another
thread runs on another core while the reactor answers requests.  Made on the reactor, a check
cost it more than its arithmetic: while the reactor's thread waited for the math without the GIL,
a job thread took the GIL, and the reactor then waited again to get it back.

A hand-off to a thread costs the reactor about as much as one check, so the checks asked for
during one reactor turn go in one batch: one ``deferToThreadPool`` call for all of them.  Batching
means waiting for the end of the turn, though, and at low concurrency a turn brings one or two
requests: there the thread would save little CPU and add its round trip to every answer's latency,
and even the wait for the turn's end costs a reactor iteration per request.  So each turn's count
decides the next turn: after a turn of fewer than OFFLOAD_AT checks they are made on the reactor
at once; after a busier one they are batched, and a batch that turns out small is still checked on
the reactor.  The measurements behind this are in docs/performance.md.
"""

from __future__ import annotations

import functools
import threading

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from snsd.trust.signing import verify_signature

# The smallest batch worth a thread's round trip.
OFFLOAD_AT = 3


def check_inline(fields: dict, certificate) -> Deferred[None]:
    """Check on the calling thread; the Deferred has fired (or failed with TrustError) on return."""
    failure = _check(fields, certificate)
    return succeed(None) if failure is None else fail(failure)


def _check(fields: dict, certificate) -> Failure | None:
    try:
        verify_signature(fields, certificate)
    except Exception:
        return Failure()
    return None


class SignatureChecks(Service):
    """``check(fields, certificate)``: at once on the reactor, or after a busy turn batched and
    made in a thread of its own.

    One thread: a turn's batch takes tens of microseconds per message, and batches run in order.
    Until the service starts (and after it stops) checks run inline, as :func:`check_inline`.
    """

    name = "signature-checks"

    def __init__(self, reactor, threads: int = 1, clock=None):
        """``clock`` (an IReactorTime, the reactor by default) marks the ends of reactor turns."""
        self._reactor = reactor
        self._clock = clock or reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=threads, name="snsd-signatures")
        # A daemon thread, like the job workers': it must never keep a stopping process alive.
        self._pool.threadFactory = functools.partial(threading.Thread, daemon=True)
        self._queued: list[tuple[dict, object, Deferred]] = []
        self._asked_this_turn = 0
        self._end_of_turn_call = None
        self.batching = False  # this turn's checks wait for its end (see the module docstring)

    def startService(self):
        Service.startService(self)
        self._pool.start()

    def stopService(self):
        Service.stopService(self)
        if self._pool.started:
            self._pool.stop()
        # Checks queued for a turn that will not end here: make them now, so no request hangs.
        if self._end_of_turn_call is not None and self._end_of_turn_call.active():
            self._end_of_turn_call.cancel()
        self._end_of_turn_call = None
        self._asked_this_turn = 0
        queued, self._queued = self._queued, []
        for fields, certificate, d in queued:
            check_inline(fields, certificate).chainDeferred(d)

    def check(self, fields: dict, certificate) -> Deferred[None]:
        if not self.running:
            return check_inline(fields, certificate)
        self._asked_this_turn += 1
        if self._end_of_turn_call is None:
            # Runs once the rest of this turn's requests have been read.
            self._end_of_turn_call = self._clock.callLater(0, self._end_of_turn)
        if not self.batching:
            return check_inline(fields, certificate)
        d: Deferred[None] = Deferred()
        self._queued.append((fields, certificate, d))
        return d

    def _end_of_turn(self) -> None:
        self._end_of_turn_call = None
        self.batching = self._asked_this_turn >= OFFLOAD_AT
        self._asked_this_turn = 0
        batch, self._queued = self._queued, []
        if len(batch) < OFFLOAD_AT:
            for fields, certificate, d in batch:
                check_inline(fields, certificate).chainDeferred(d)
            return
        work = [(fields, certificate) for fields, certificate, _ in batch]
        handed = deferToThreadPool(self._reactor, self._pool, _check_all, work)
        handed.addCallbacks(_fire_each, _fail_each, callbackArgs=(batch,), errbackArgs=(batch,))


def _check_all(work: list) -> list:
    """In the thread: each check's outcome, None or the Failure it raised."""
    return [_check(fields, certificate) for fields, certificate in work]


def _fire_each(outcomes: list, batch: list) -> None:
    for (_, _, d), outcome in zip(batch, outcomes, strict=True):
        if outcome is None:
            d.callback(None)
        else:
            d.errback(outcome)


def _fail_each(failure: Failure, batch: list) -> None:
    # The hand-off itself failed (the pool was stopped under it): every check in the batch.
    for _, _, d in batch:
        d.errback(failure)
