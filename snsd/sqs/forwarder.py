"""The listener's forwarder: moves spooled records from the local SQLite spool to the SQS queue.

It stands where the dispatcher stands in the single-process daemon (admission calls ``accept``;
the daemon calls ``start``, ``drain``), but instead of running jobs it sends each record to the
queue, ten to a ``SendMessageBatch`` call, and completes a record in the spool only once SQS
confirmed it.  So the listener's promise is unchanged: 200 only after the local commit, and a
record leaves this disk only once it is durable in SQS.  A crash between the two sends it again
(SQS is at least once anyway; docs/scaling.md).

While SQS cannot be reached the listener goes on accepting up to ``--max-pending`` records and
the forwarder retries with a backoff doubling from :data:`FIRST_BACKOFF` to :data:`MAX_BACKOFF`:
SNS gives up on an endpoint after about a minute of 5xx, so an SQS outage must never become one.

One claim is in flight at a time, sent as up to ``parallel`` batches of ten side by side: one
batch per round trip capped the send rate at ten records per SQS round trip (measured in
docs/scaling.md); a single claim at a time keeps the cursor simple (records after the first
one not confirmed are claimed again).
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed

from snsd import metrics
from snsd.admission import AlreadyAccepted, Backpressure
from snsd.dispatcher import _detached
from snsd.idle import IdleWaiters
from snsd.logs import Logger
from snsd.sqs.codec import encode_record
from snsd.sqs.queue import BATCH

log = Logger()

FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0


class Backoff:
    """Capped doubling: FIRST_BACKOFF, 2x, 4x, ... up to MAX_BACKOFF; reset after a success."""

    def __init__(self, first: float = FIRST_BACKOFF, cap: float = MAX_BACKOFF):
        self.first = first
        self.cap = cap
        self.failures = 0

    def next(self) -> float:
        delay = min(self.cap, self.first * 2**self.failures)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


class Forwarder(Service):
    name = "dispatcher"  # it holds the dispatcher's place in the daemon (snsd.daemon)

    def __init__(
        self, spool, queue, clock, *, max_pending: int = 10_000, backoff: Backoff | None = None, parallel: int = 3
    ):
        self.spool = spool
        self.parallel = parallel  # SendMessageBatch calls in flight at once (each on an io thread)
        self.queue = queue
        self.clock = clock
        self.max_pending = max_pending
        self.backoff = backoff or Backoff()
        self.pending = 0  # records spooled here and not yet confirmed by SQS
        self.ready = False
        self.draining = False
        self.jobs_running = 0  # a listener runs no jobs
        self._cursor = 0  # the highest record id sent, or just below the first one to send again
        self._in_flight: Deferred | None = None
        self._retry = None  # the delayed call of the next try after a failure
        self._idle = IdleWaiters(clock)

    # -- the daemon's calls ------------------------------------------------------------------

    def start(self, recovery) -> None:
        self.pending = recovery.pending
        self._publish_pending()
        self.ready = True
        if recovery.pending:
            log.info(
                "{pending} spooled records still to forward to {queue}", pending=recovery.pending, queue=self.queue.url
            )
        self._pump()

    def drain(self, timeout: float) -> Deferred:
        """Stop sending; fire True once the batch in flight is answered, False at the timeout.
        Whatever is not confirmed stays spooled and is sent at the next start."""
        self.draining = True
        self.ready = False
        self._cancel_retry()
        if self._in_flight is None:
            return succeed(True)
        return self._idle.wait(timeout)

    def dead_letter_unstarted(self, reason: str) -> Deferred:
        """An in-memory spool's records die with the process: log each (as the dispatcher does)."""

        def log_each(rows):
            for record_id, message_id, record in rows:
                log.critical(
                    "record {record_id} of {message_id} not forwarded at shutdown of an in-memory spool: "
                    "dead letter {record}",
                    record_id=record_id,
                    message_id=message_id,
                    record=record,
                    reason=reason,
                )
            return len(rows)

        return self.spool.dead_letter_remaining(0, reason).addCallback(log_each)

    def stopService(self):
        self._cancel_retry()
        return Service.stopService(self)

    # -- admission's calls -------------------------------------------------------------------

    def accept(self, envelope, records, track: bool = False, remember_until: float | None = None) -> Deferred:
        """Spool a message's records; fires with their ids once they are durably recorded here."""
        if track:
            raise ValueError("a listener cannot wait for jobs (--ack after-job needs --role all)")
        if self.pending >= self.max_pending:
            raise Backpressure(f"{self.pending} records not yet forwarded (max {self.max_pending})")
        self.pending += len(records)

        def spooled(ids):
            if ids is None:
                self.pending -= len(records)
                raise AlreadyAccepted(envelope.message_id)
            self._publish_pending()
            self._pump()
            return ids

        def failed(failure):
            self.pending -= len(records)
            return failure

        try:
            write = self.spool.add(envelope, records, remember_until)
        except BaseException:
            self.pending -= len(records)
            raise
        return _detached(write.addCallbacks(spooled, failed), "spooling a message")

    def skip(self, envelope, records, remember_until: float | None = None) -> Deferred:
        """The breaker was forced open in skip mode: keep the records as local dead letters."""

        def kept(written):
            if written is None:
                raise AlreadyAccepted(envelope.message_id)
            metrics.DEAD_LETTERS.labels(reason="breaker_open").inc(len(records))

        return self.spool.add_dead_letters(
            envelope, records, "breaker_open", remember_until=remember_until
        ).addCallback(kept)

    # -- forwarding ----------------------------------------------------------------------------

    def _publish_pending(self) -> None:
        metrics.OUTBOX_PENDING.set(self.pending)
        metrics.SPOOL_PENDING.set(self.pending)  # a listener's spool holds just these; the activity line reads it

    def next_try(self) -> float | None:
        """When the next send is tried after a failure (clock seconds), or None if none waits."""
        return self._retry.getTime() if self._retry is not None and self._retry.active() else None

    def _cancel_retry(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def _pump(self) -> None:
        if self._in_flight is not None or self._retry is not None or self.draining or not self.ready:
            return
        if self.pending <= 0:
            return
        self._in_flight = self.spool.claim(self._cursor, BATCH * self.parallel).addCallback(self._send)
        self._in_flight.addCallbacks(self._sent, self._failed)

    def _send(self, claimed):
        """The claimed records in batches of ten, sent side by side; fires with (records, results)."""
        batches = [claimed[i : i + BATCH] for i in range(0, len(claimed), BATCH)]
        sends = [
            self.queue.send_batch([(str(spooled.id), encode_record(spooled.record)) for spooled in batch])
            for batch in batches
        ]
        return DeferredList(sends, consumeErrors=True).addCallback(lambda results: (claimed, results))

    def _sent(self, outcome) -> None:
        batch, results = outcome
        self._in_flight = None
        if not batch:
            # Nothing past the cursor although some are pending: a count drifted (a failed
            # complete put records back).  Start over from the beginning next time.
            self._cursor = 0
            self._settle_idle()
            return
        sent: set[int] = set()
        failure = None
        for ok, result in results:
            if not ok:
                failure = result  # the whole call failed (SQS unreachable): its records wait
                continue
            sent.update(int(i) for i in result.sent)
            for entry_id, reason in result.failed.items():
                log.warn(
                    "SQS refused record {record_id}: {reason}; sending it again", record_id=entry_id, reason=reason
                )
        unsent = [spooled.id for spooled in batch if spooled.id not in sent]
        if failure is not None and not sent:
            self._failed(failure)
            return
        if sent:
            self.pending = max(0, self.pending - len(sent))
            metrics.FORWARDED.inc(len(sent))
            self._publish_pending()
            self.spool.complete(*sorted(sent)).addErrback(
                lambda f: log.failure("could not complete forwarded records; they will be sent again", f)
            )
        if unsent:
            if failure is not None:
                metrics.FORWARD_FAILURES.labels(what="call").inc()
            else:
                metrics.FORWARD_FAILURES.labels(what="entry").inc(len(unsent))
            self._cursor = min(unsent) - 1
            self._settle_idle()
            self._later()
            return
        self.backoff.reset()
        self._cursor = max(sent)
        self._settle_idle()
        self._pump()

    def _failed(self, failure) -> None:
        self._in_flight = None
        metrics.FORWARD_FAILURES.labels(what="call").inc()
        delay = self._later()
        log.warn(
            "forwarding to {queue} failed ({error}); {pending} records wait, trying again in {delay:g}s",
            queue=self.queue.url,
            error=failure.getErrorMessage() or failure.type.__name__,
            pending=self.pending,
            delay=delay,
        )
        self._settle_idle()

    def _later(self) -> float:
        delay = self.backoff.next()
        if not self.draining:

            def again():
                self._retry = None
                self._pump()

            self._retry = self.clock.callLater(delay, again)
        return delay

    def _settle_idle(self) -> None:
        self._idle.settle()
