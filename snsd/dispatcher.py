"""The dispatcher: feeds spooled records to the worker pool as workers free up and the
breaker allows, and records each outcome before the record leaves the spool.

It keeps only counters in memory; the records themselves stay in the spool, so a burst of
any size costs the same memory and a crash loses nothing that was acknowledged.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.python.failure import Failure

from snsd import metrics
from snsd.admission import AlreadyAccepted, Backpressure, BreakerPolicy
from snsd.batching import BATCH_WAIT, ShortJobBatches
from snsd.breaker import CircuitBreaker, State
from snsd.envelope import SNSEnvelope
from snsd.idle import IdleWaiters
from snsd.logs import Logger
from snsd.records import S3ObjectRecord
from snsd.results import run_job, verdict_of
from snsd.spool import SpooledRecord

log = Logger()

__all__ = ["AlreadyAccepted", "Backpressure", "Dispatcher"]

CLAIM_RETRY = 1.0  # seconds before a failed claim is tried again


class Dispatcher(Service):
    name = "dispatcher"

    def __init__(
        self,
        spool,
        pool,
        breaker: CircuitBreaker,
        job,
        sink,
        clock,
        *,
        workers: int,
        policy: BreakerPolicy | None = None,
        max_pending: int = 10_000,
        batch_wait: float = BATCH_WAIT,
    ):
        self.spool = spool
        self.pool = pool
        self.breaker = breaker
        self.job = job
        self.sink = sink
        self.clock = clock
        self.workers = workers
        self.policy = policy if policy is not None else BreakerPolicy(breaker)
        self.max_pending = max_pending
        # Sub-millisecond jobs go to the pool in batches, one batch at a time (snsd/batching.py).
        self.batches = ShortJobBatches(clock, self._pump, wait=batch_wait)
        self.pending = 0  # records spooled and not yet claimed (or reserved by an in-flight add)
        self._running_since: dict[int, float] = {}  # record id -> when its job started
        self.ready = False
        self.draining = False
        self._cursor = 0  # highest record id claimed since start
        self._claiming = False
        self._waiters: dict[int, list[Deferred]] = {}
        self._idle = IdleWaiters(clock)
        breaker.on_change(self._breaker_changed)

    # Not `running`: that name is Service's own started/stopped flag.
    @property
    def jobs_running(self) -> int:
        """Records handed to the pool whose job has not finished."""
        return len(self._running_since)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, recovery) -> None:
        """Called once the spool is open, with what the restart found."""
        self.pending = recovery.pending
        metrics.SPOOL_PENDING.set(self.pending)
        self.ready = True
        if recovery.pending:
            log.info("recovered {pending} spooled records; running them again", pending=recovery.pending)
        self._pump()

    def drain(self, timeout: float) -> Deferred:
        """Stop starting jobs; fire with True once running jobs end, False at the timeout."""
        self.draining = True
        self.ready = False
        self.batches.stop_holding()  # nothing starts any more: no batch waits for company
        if self.jobs_running == 0:
            return succeed(True)
        return self._idle.wait(timeout)

    def dead_letter_unstarted(self, reason: str) -> Deferred:
        """At the end of an in-memory spool's drain: every record left becomes a logged dead letter."""

        def log_each(rows):
            for record_id, message_id, record in rows:
                log.critical(
                    # Running (drain timed out) or never started: either way it is lost with this process.
                    "record {record_id} of {message_id} not done at shutdown of an in-memory spool: "
                    "dead letter {record}",
                    record_id=record_id,
                    message_id=message_id,
                    record=record,
                    reason=reason,
                )
                metrics.DEAD_LETTERS.labels(reason=reason).inc()
            return len(rows)

        return self.spool.dead_letter_remaining(0, reason).addCallback(log_each)

    # -- the web layer's calls -------------------------------------------------------------

    def accept(
        self,
        envelope: SNSEnvelope,
        records: tuple[S3ObjectRecord, ...],
        track: bool = False,
        remember_until: float | None = None,
    ) -> Deferred:
        """Spool a message's records; fires once they are durably recorded.

        Fires with the record ids or, with ``track=True`` (``--ack after-job``), with
        ``(ids, done)``, ``done`` a Deferred that fires True when every record succeeded and False when any failed,
        registered before the records can start so a fast job cannot finish unseen.
        ``remember_until``: until when the spool remembers the MessageId (``AcceptedIds.until``).
        """
        # Below the cap a message is taken whole, however many records it carries: a message larger
        # than the cap would otherwise be refused on every try with nothing pending, a permanent
        # condition answered as a temporary one.  The spool may exceed the cap by one message.
        if self.pending >= self.max_pending:
            raise Backpressure(f"{self.pending} records pending (max {self.max_pending})")
        # Reserve before the write so concurrent messages cannot overshoot the cap by more than one.
        self.pending += len(records)

        def spooled(ids):
            if ids is None:  # a redelivery the endpoint's bounded memory no longer held
                self.pending -= len(records)
                raise AlreadyAccepted(envelope.message_id)
            metrics.SPOOL_PENDING.set(self.pending)
            done = self._when_done(ids) if track else None
            self._pump()
            # A tuple, not the bare Deferred: a callback returning a Deferred would chain on it.
            return (ids, done) if track else ids

        def failed(failure):
            self.pending -= len(records)
            return failure

        try:
            write = self.spool.add(envelope, records, remember_until)
        except BaseException:
            self.pending -= len(records)  # nothing was queued: give the reservation back
            raise
        # The caller may give up (the client hangs up and Klein cancels its handler), but the
        # write goes on and commits: the pending count must follow the write, not the caller.
        return _detached(write.addCallbacks(spooled, failed), "spooling a message")

    def skip(
        self, envelope: SNSEnvelope, records: tuple[S3ObjectRecord, ...], remember_until: float | None = None
    ) -> Deferred:
        """The breaker is open in ``skip`` mode: keep the records as dead letters."""

        def kept(written):
            if written is None:  # a redelivery the endpoint's bounded memory no longer held
                raise AlreadyAccepted(envelope.message_id)
            metrics.DEAD_LETTERS.labels(reason="breaker_open").inc(len(records))

        return self.spool.add_dead_letters(
            envelope, records, "breaker_open", remember_until=remember_until
        ).addCallback(kept)

    def _when_done(self, record_ids) -> Deferred:
        waits = []
        for record_id in record_ids:
            d = Deferred()
            self._waiters.setdefault(record_id, []).append(d)
            waits.append(d)
        every = DeferredList(waits, consumeErrors=True).addCallback(lambda results: all(ok and v for ok, v in results))
        # --ack after-job gives up at its timeout by cancelling what it waits on; the records'
        # waiters must stay, or cancelling them would read as "a job failed".
        return _detached(every, "waiting for jobs")

    # -- feeding the pool ------------------------------------------------------------------

    def _breaker_changed(self, state: State) -> None:
        if state in (State.CLOSED, State.HALF_OPEN):
            self._pump()

    def _pump(self) -> None:
        if self._claiming or self.draining or not self.ready or self.pending <= 0:
            return
        # No more permits than records waiting: each unused one is acquired and released for nothing.
        room = self.batches.room(self.workers)
        free = min(room, self.pending)
        # A batch may wait for company unless someone waits on a record or the breaker probes.
        may_wait = not (self._waiters or self._idle) and self.breaker.state is State.CLOSED
        if free <= 0 or self.batches.hold(free < room, may_wait):
            return
        permits = []
        while len(permits) < free:
            permit = self.breaker.acquire()
            if permit is None:
                break
            permits.append(permit)
        if not permits:
            if self.policy.skips_spooled():
                self._claim(free, permits=None)
            return
        self._claim(len(permits), permits)

    def _claim(self, limit: int, permits) -> None:
        self._claiming = True

        def claimed(batch: list[SpooledRecord]):
            self._claiming = False
            if batch:
                self._cursor = max(self._cursor, batch[-1].id)
            if self.draining:
                # The claim was in flight when the drain began: start nothing.  The records are
                # still in the spool (claiming deletes nothing), so the next start runs them.
                for permit in permits or ():
                    self.breaker.release(permit)
                return
            self.pending = max(0, self.pending - len(batch))
            metrics.SPOOL_PENDING.set(self.pending)
            if permits is None:
                for spooled in batch:
                    self._skip_spooled(spooled)
            else:
                started = list(zip(batch, permits, strict=False))
                size = self.batches.size()
                for i in range(0, len(started), size):
                    self._start(started[i : i + size])
                for permit in permits[len(batch) :]:
                    self.breaker.release(permit)
            if batch:
                self._pump()

        def failed(failure):
            self._claiming = False
            for permit in permits or ():
                self.breaker.release(permit)
            log.failure("spool claim failed; trying again in {delay}s", failure, delay=CLAIM_RETRY)
            # Nothing else may come along to pump (a quiet period): the records must not wait for it.
            self.clock.callLater(CLAIM_RETRY, self._pump)

        self.spool.claim(self._cursor, limit).addCallbacks(claimed, failed)

    def _skip_spooled(self, spooled: SpooledRecord) -> None:
        self._dead_letter(spooled.id, "breaker_open", None)

    def _dead_letter(self, record_id: int, reason: str, error: str | None) -> None:
        """Move a record to the dead letters; whoever waits on it learns it failed once that commits."""
        metrics.DEAD_LETTERS.labels(reason=reason).inc()
        self.spool.dead_letter(record_id, reason, error).addBoth(self._settled, [record_id], False)

    def _start(self, started: list[tuple[SpooledRecord, object]]) -> None:
        """Hand records (with their permits) to the pool in one call."""
        now = self.clock.seconds()
        for spooled, _ in started:
            self._running_since[spooled.id] = now
        token = self.batches.handed_off()
        metrics.JOBS_RUNNING.inc(len(started))
        d = self.pool.submit(self._run_in_thread, [spooled for spooled, _ in started])
        d.addCallbacks(
            self._handed_back, self._lost_in_pool, callbackArgs=(started, token), errbackArgs=(started, token)
        )

    def _run_in_thread(self, batch: list[SpooledRecord]) -> list:
        """Run each record's job and record its result; in a worker thread.

        Returns, per record, its result line or the Failure of writing it to the sink.  A batch's
        results go to the sink in one ``write_many`` call; if that fails, each is written alone,
        so only a result that cannot be written fails (one written before the failure may then
        appear twice: results are at least once, as after a crash)."""
        lines = [run_job(self.job, spooled.record, spooled.attempts) for spooled in batch]
        if len(lines) > 1:
            try:
                self.sink.write_many(lines)
                return lines
            except Exception:
                pass  # written one by one below: then only a result that cannot be written fails
        outcomes = []
        for line in lines:
            try:
                self.sink.write(line)
            except Exception:
                outcomes.append(Failure())
            else:
                outcomes.append(line)
        return outcomes

    def _handed_back(self, outcomes: list, started, token: int) -> None:
        self.batches.handed_back(token)
        succeeded = []
        for (spooled, permit), outcome in zip(started, outcomes, strict=True):
            if isinstance(outcome, Failure):
                self._crashed(outcome, spooled, permit)
            elif self._finished(outcome, spooled, permit):
                succeeded.append(spooled.id)
        if succeeded:
            # One spool operation for the batch; committed lazily unless someone waits on a
            # record in it (--ack after-job, a drain).
            lazy = not self._idle and not any(record_id in self._waiters for record_id in succeeded)
            self.spool.complete(*succeeded, lazy=lazy).addBoth(self._settled, succeeded, True)
        self._pump()  # the worker is free now, whenever the spool update commits

    def _lost_in_pool(self, failure: Failure, started, token: int) -> None:
        # The pool call itself failed (not a job: run_job catches those): every record in it.
        self.batches.handed_back(token)
        for spooled, permit in started:
            self._crashed(failure, spooled, permit)
        self._pump()

    def _finished(self, line: dict, spooled: SpooledRecord, permit) -> bool:
        """Count a job's outcome.  True: its record may leave the spool; False: it went to the dead letters."""
        self._running_since.pop(spooled.id, None)
        metrics.JOBS_RUNNING.dec()
        seconds = line["duration_ms"] / 1000
        metrics.JOB_DURATION.observe(seconds)
        self.batches.finished(seconds)
        verdict = verdict_of(line)
        metrics.jobs(line["status"], verdict).inc()
        if line["status"] == "ok":
            self.breaker.succeeded(permit)
            log.debug(
                "job ok {bucket}/{key} {verdict} in {duration_ms}ms",
                bucket=line["bucket"],
                key=line["key"],
                verdict=verdict,
                duration_ms=line["duration_ms"],
                message_id=line["message_id"],
            )
            return True
        self.breaker.failed(permit)
        self._dead_letter(spooled.id, "job_error", line["error"])
        error, kind = line["error"], line["error_kind"]
        log.warn(
            "job failed {bucket}/{key}: {problem}",
            bucket=line["bucket"],
            key=line["key"],
            # The job's own errors already start with their kind ("s3_not_found: s3://..."): once is enough.
            problem=error if error.startswith(f"{kind}:") else f"{kind}: {error}",
            error=error,
            error_kind=kind,
            message_id=line["message_id"],
            duration_ms=line["duration_ms"],
        )
        return False

    def _crashed(self, failure, spooled: SpooledRecord, permit) -> None:
        # The result could not be recorded (the sink failed): keep the record as a dead letter.
        self._running_since.pop(spooled.id, None)
        metrics.JOBS_RUNNING.dec()
        self.breaker.failed(permit)
        log.failure("recording the result of {record_id} failed", failure, record_id=spooled.id)
        self._dead_letter(spooled.id, "sink_error", failure.getErrorMessage())

    def _settled(self, outcome, record_ids: list[int], ok: bool) -> None:
        if isinstance(outcome, Failure):
            log.failure("spool update for records {record_ids} failed", outcome, record_ids=record_ids)
        for record_id in record_ids:
            for d in self._waiters.pop(record_id, ()):
                d.callback(ok)
        if self.jobs_running == 0 and self._idle:
            self._idle.settle()
        self._pump()


def _detached(source: Deferred, what: str) -> Deferred:
    """A Deferred with ``source``'s result whose cancellation leaves ``source`` alone."""
    copy = Deferred()

    def forward(result):
        if not copy.called:
            copy.callback(result)
        elif isinstance(result, Failure):
            log.failure("{what} failed after its caller gave up", result, what=what)

    source.addBoth(forward)
    return copy
