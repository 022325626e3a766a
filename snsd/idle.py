"""Waiting, with a deadline, for the work in progress to end: the drain of the dispatcher, the
SQS forwarder and the SQS worker."""

from __future__ import annotations

from twisted.internet.defer import Deferred


class IdleWaiters:
    """Deferreds that fire True once :meth:`settle` says the work has ended, or False when their
    own timeout passes first."""

    def __init__(self, clock):
        self.clock = clock
        self._waiting: list[Deferred] = []

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def wait(self, timeout: float) -> Deferred:
        done = Deferred()
        self._waiting.append(done)
        timer = self.clock.callLater(timeout, lambda: done.called or done.callback(False))
        done.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
        return done

    def settle(self) -> None:
        waiting, self._waiting = self._waiting, []
        for done in waiting:
            if not done.called:
                done.callback(True)
