"""The worker: takes messages from the SQS queue, runs their jobs, writes results, deletes them.

    receive (long poll, at most as many messages as free workers)
      -> decode (snsd record | SNS envelope, verified | S3 notification; else delete + metric)
      -> one job per record on the sized pool, each through the breaker
      -> every result written -> delete the message
         a job failed          -> the message comes back after a short delay; after the queue's
                                  maxReceiveCount receives, SQS moves it to the dead-letter queue

While a message's jobs run its visibility timeout is extended every third of it (the heartbeat),
so a long job is not handed to a second worker; a worker that dies stops extending, and the
message comes back after at most one timeout.  While the breaker is open nothing is received:
the records wait in the queue and none is skipped.  On SIGTERM (:meth:`drain`) receiving stops,
running jobs get up to ``--drain-timeout``, and every message not finished is made visible
again at once (visibility 0), so another worker takes it now rather than after the timeout.

Every wait here is on ``clock`` (an ``IReactorTime``), so the tests drive it with ``Clock``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.python.failure import Failure

from snsd import metrics
from snsd.idle import IdleWaiters
from snsd.logs import Logger
from snsd.results import run_job, verdict_of
from snsd.sqs.codec import Discard, Later, Work, decode
from snsd.sqs.forwarder import Backoff
from snsd.sqs.queue import BATCH, LONG_POLL, QueueMessage

log = Logger()

# ReceiveMessage calls in flight at once: while one waits for its answer (an SQS round trip,
# tens of ms under load) the other can already bring work for workers that freed up meanwhile.
# Each holds an io thread for up to its 20 s wait, so this stays well below the io threads
# (snsd.daemon.SQS_IO_THREADS), which sends, deletes and heartbeats need too.
MAX_RECEIVES = 2
# A finished message waits up to this long for others to share its DeleteMessageBatch call: one
# call per ten messages instead of one each (docs/scaling.md's cost arithmetic).
DELETE_WAIT = 0.05
# How much longer than its wait a long poll may take to answer before a drain stops waiting for it.
RECEIVE_GRACE = 5
# A failed job's message comes back after min(2 ** (receives - 1), visibility) seconds.
MAX_RETRY_DELAY = 300


@dataclass
class Held:
    """A message this worker holds (received, not yet deleted or released)."""

    message: QueueMessage
    jobs_left: int = 0
    failed: bool = False
    heartbeat: object = None
    records: tuple = field(default=())


class QueueWorker(Service):
    name = "dispatcher"  # it holds the dispatcher's place in the daemon (snsd.daemon)

    def __init__(
        self,
        queue,
        pool,
        breaker,
        job,
        sink,
        clock,
        verifier,
        *,
        workers: int,
        visibility: int = 60,
        wait: int = LONG_POLL,
        backoff: Backoff | None = None,
    ):
        self.queue = queue
        self.pool = pool
        self.breaker = breaker
        self.job = job
        self.sink = sink
        self.clock = clock
        self.verifier = verifier
        self.workers = workers
        self.visibility = visibility
        self.wait = wait
        self.backoff = backoff or Backoff(first=1.0)
        self.ready = False
        self.draining = False
        self.pending = 0  # nothing waits here: the queue holds it
        self.jobs_running = 0
        self._held: dict[str, Held] = {}  # receipt handle -> message
        self._receives = 0  # ReceiveMessage calls in flight
        self._requested = 0  # messages those calls may still bring
        self._receive_waiters: list[Deferred] = []
        self._to_delete: list[tuple[QueueMessage, str]] = []  # finished, waiting for a DeleteMessageBatch
        self._delete_call = None
        self._deleting: list[Deferred] = []
        self._retry = None
        self._idle = IdleWaiters(clock)
        breaker.on_change(lambda state: self._poll())

    # -- the daemon's calls --------------------------------------------------------------------

    def start(self, recovery=None) -> None:
        self.ready = True
        self._poll()

    def drain(self, timeout: float) -> Deferred:
        """Stop receiving; let running jobs finish up to ``timeout``; release the rest at once.
        Fires True if every job finished, False if some were released unfinished."""
        self.draining = True
        self.ready = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self.jobs_running == 0:
            finished = succeed(True)
        else:
            finished = self._idle.wait(timeout)

        def release(all_done):
            return self._release_all().addBoth(lambda _: all_done)

        # A long poll still in flight may yet return messages: they go back at once (in
        # _received), rather than stay invisible for a timeout with this process gone.
        return finished.addCallback(lambda all_done: self._receive_ended().addCallback(lambda _: all_done)).addCallback(
            release
        )

    def _receive_ended(self) -> Deferred:
        """Fires once no receive is in flight (at most LONG_POLL + RECEIVE_GRACE s from now)."""
        if not self._receives:
            return succeed(None)
        ended = Deferred()
        self._receive_waiters.append(ended)
        timer = self.clock.callLater(self.wait + RECEIVE_GRACE, lambda: ended.called or ended.callback(None))
        return ended.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])

    def _fire_receive_waiters(self, _=None) -> None:
        waiters, self._receive_waiters = self._receive_waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)

    def dead_letter_unstarted(self, reason: str) -> Deferred:
        return succeed(0)  # nothing is kept here: unfinished messages went back to the queue

    # -- receiving -------------------------------------------------------------------------------

    def free(self) -> int:
        """Workers with no job, less the messages received whose jobs have not started yet."""
        waiting = sum(1 for held in self._held.values() if not held.records)
        return max(0, self.workers - self.jobs_running - waiting)

    def _poll(self) -> None:
        if not self.ready or self.draining or self._retry is not None or self._receives >= MAX_RECEIVES:
            return
        if self.breaker.is_open:
            return  # the breaker's change calls _poll again
        room = min(BATCH, self.free() - self._requested)
        if self.breaker.active:
            # Half open: one trial job at a time.  Messages beyond it would only go back to the
            # queue and come straight back, a storm of receives for as long as the trial runs.
            if self.jobs_running or self._receives or self._held:
                return  # the trial's end (or the breaker's change) calls _poll again
            room = min(room, 1)
        if room <= 0:
            return  # a job's end calls _poll again
        self._receives += 1
        self._requested += room
        self.queue.receive(room, self.wait, self.visibility).addCallbacks(
            self._received, self._receive_failed, callbackArgs=(room,), errbackArgs=(room,)
        )
        self._poll()  # more room (over ten free workers): a second receive, side by side

    def _receive_done(self, room: int) -> None:
        self._receives -= 1
        self._requested -= room
        if not self._receives:
            self._fire_receive_waiters()

    def _receive_failed(self, failure: Failure, room: int) -> None:
        self._receive_done(room)
        metrics.SQS_RECEIVE_FAILURES.inc()
        delay = self.backoff.next()
        log.warn(
            "receiving from {queue} failed ({error}); trying again in {delay:g}s",
            queue=self.queue.url,
            error=failure.getErrorMessage() or failure.type.__name__,
            delay=delay,
        )

        def again():
            self._retry = None
            self._poll()

        self._retry = self.clock.callLater(delay, again)

    def _received(self, messages: list[QueueMessage], room: int) -> None:
        self.backoff.reset()
        metrics.SQS_RECEIVED.inc(len(messages))
        if self.draining:
            # The long poll was in flight when the drain began: held only to go straight back
            # with the drain's release, which the drain waits for.
            for message in messages:
                self._held[message.receipt_handle] = Held(message)
            self._receive_done(room)
            return
        self._receive_done(room)
        for message in messages:
            if message.receive_count > 1:
                metrics.SQS_REDELIVERED.inc()
            held = Held(message)
            self._held[message.receipt_handle] = held
            self._heartbeat_later(held)
            ensureDeferred(decode(message.body, message.message_id, self.verifier)).addCallbacks(
                self._decoded, self._decode_crashed, callbackArgs=(held,), errbackArgs=(held,)
            )
        self._poll()

    # -- one message -----------------------------------------------------------------------------

    def _decoded(self, outcome, held: Held) -> None:
        message = held.message
        if isinstance(outcome, Discard):
            metrics.SQS_DISCARDED.labels(reason=outcome.reason).inc()
            log.warn(
                "deleting message {sqs_message_id} without a job: {reason} ({detail})",
                sqs_message_id=message.message_id,
                reason=outcome.reason,
                detail=outcome.detail,
            )
            self._delete(held, "discarded")
            return
        if isinstance(outcome, Later):
            log.warn(
                "message {sqs_message_id} cannot be checked now ({reason}); it comes back later",
                sqs_message_id=message.message_id,
                reason=outcome.reason,
            )
            self._give_back(held, self._retry_delay(message))
            return
        assert isinstance(outcome, Work)
        if self.draining:
            self._give_back(held, 0)
            return
        permits = []
        for _ in outcome.records:
            permit = self.breaker.acquire()
            if permit is None:
                break
            permits.append(permit)
        if len(permits) < len(outcome.records):
            # The breaker opened (or allows only a trial) since the receive: nothing is skipped,
            # the message waits in the queue.
            for permit in permits:
                self.breaker.release(permit)
            self._give_back(held, 0)
            return
        held.records = outcome.records
        held.jobs_left = len(outcome.records)
        self.jobs_running += len(outcome.records)
        metrics.JOBS_RUNNING.inc(len(outcome.records))
        for record, permit in zip(outcome.records, permits, strict=True):
            attempt = message.receive_count
            d = self.pool.submit(self._run_in_thread, record, attempt)
            d.addCallbacks(self._job_done, self._job_crashed, callbackArgs=(held, permit), errbackArgs=(held, permit))

    def _decode_crashed(self, failure: Failure, held: Held) -> None:
        log.failure("could not read message {sqs_message_id}", failure, sqs_message_id=held.message.message_id)
        self._give_back(held, self._retry_delay(held.message))

    def _run_in_thread(self, record, attempt: int) -> dict:
        line = run_job(self.job, record, attempt)
        if line["status"] == "ok":
            self.sink.write(line)  # raising: no result recorded, the message comes back
        return line

    def _job_done(self, line: dict, held: Held, permit) -> None:
        self._job_ended()
        metrics.JOB_DURATION.observe(line["duration_ms"] / 1000)
        metrics.jobs(line["status"], verdict_of(line)).inc()
        if line["status"] == "ok":
            self.breaker.succeeded(permit)
        else:
            self.breaker.failed(permit)
            held.failed = True
            log.warn(
                "job failed {bucket}/{key}: {error} (receive {receives} of its message)",
                bucket=line["bucket"],
                key=line["key"],
                error=line["error"],
                error_kind=line["error_kind"],
                receives=held.message.receive_count,
                sqs_message_id=held.message.message_id,
            )
        self._one_less(held)

    def _job_crashed(self, failure: Failure, held: Held, permit) -> None:
        self._job_ended()
        self.breaker.failed(permit)
        held.failed = True
        log.failure("recording a result of {sqs_message_id} failed", failure, sqs_message_id=held.message.message_id)
        self._one_less(held)

    def _job_ended(self) -> None:
        self.jobs_running -= 1
        metrics.JOBS_RUNNING.dec()

    def _one_less(self, held: Held) -> None:
        held.jobs_left -= 1
        if held.jobs_left == 0 and held.message.receipt_handle in self._held:
            if held.failed:
                self._give_back(held, self._retry_delay(held.message))
            else:
                self._delete(held, "done")
        if self.jobs_running == 0 and self._idle:
            self._idle.settle()
        self._poll()

    def _retry_delay(self, message: QueueMessage) -> int:
        return min(2 ** max(0, message.receive_count - 1), self.visibility, MAX_RETRY_DELAY)

    # -- the queue's side of a held message ------------------------------------------------------

    def _forget(self, held: Held) -> bool:
        if self._held.pop(held.message.receipt_handle, None) is None:
            return False
        if held.heartbeat is not None and held.heartbeat.active():
            held.heartbeat.cancel()
        return True

    def _delete(self, held: Held, why: str) -> None:
        """Delete the message, in a DeleteMessageBatch with others finished within DELETE_WAIT."""
        if not self._forget(held):
            return
        self._to_delete.append((held.message, why))
        if len(self._to_delete) >= BATCH or self.draining:
            self._flush_deletes()
        elif self._delete_call is None:
            self._delete_call = self.clock.callLater(DELETE_WAIT, self._flush_deletes)

    def _flush_deletes(self) -> Deferred:
        if self._delete_call is not None and self._delete_call.active():
            self._delete_call.cancel()
        self._delete_call = None
        batch, self._to_delete = self._to_delete[:BATCH], self._to_delete[BATCH:]
        if self._to_delete:
            self._delete_call = self.clock.callLater(0, self._flush_deletes)
        if not batch:
            return succeed(None)
        by_handle = {message.receipt_handle: (message, why) for message, why in batch}

        def deleted(not_deleted):
            for handle, (message, why) in by_handle.items():
                if handle in not_deleted:
                    log.warn("SQS did not delete message {sqs_message_id}", sqs_message_id=message.message_id)
                else:
                    metrics.SQS_DELETED.labels(why=why).inc()

        def failed(failure):
            # They come back after their visibility timeout and run again: results are idempotent.
            log.warn(
                "could not delete {count} messages: {error}; they will be delivered again",
                count=len(batch),
                error=failure.getErrorMessage(),
            )

        d = self.queue.delete(list(by_handle)).addCallbacks(deleted, failed)
        self._deleting.append(d)
        d.addBoth(lambda _: self._deleting.remove(d))
        return d

    def _give_back(self, held: Held, seconds: int) -> None:
        if self._forget(held):
            self._release([held.message.receipt_handle], "retry", seconds)

    def _release(self, handles: list[str], why: str, seconds: int = 0) -> Deferred:
        if not handles:
            return succeed(None)
        return self.queue.change_visibility(handles, seconds).addErrback(
            lambda f: log.warn(
                "could not release {count} messages ({why}): {error}; they come back after their timeout",
                count=len(handles),
                why=why,
                error=f.getErrorMessage(),
            )
        )

    def _release_all(self) -> Deferred:
        # Finished messages are deleted (not released: their results are written), and waited for.
        while self._to_delete:
            self._flush_deletes()
        deletes = DeferredList(list(self._deleting), consumeErrors=True)
        held = list(self._held.values())
        for h in held:
            self._forget(h)
        if held:
            log.info("draining: making {count} unfinished messages visible again", count=len(held))
        released = self._release([h.message.receipt_handle for h in held], "draining")
        return DeferredList([deletes, released], consumeErrors=True)

    def _heartbeat_later(self, held: Held) -> None:
        held.heartbeat = self.clock.callLater(max(1, self.visibility / 3), self._heartbeat, held)

    def _heartbeat(self, held: Held) -> None:
        if held.message.receipt_handle not in self._held:
            return

        def extended(_):
            metrics.SQS_VISIBILITY_EXTENSIONS.inc()

        self.queue.change_visibility([held.message.receipt_handle], self.visibility).addCallbacks(
            extended,
            lambda f: log.warn(
                "could not extend message {sqs_message_id}: {error}",
                sqs_message_id=held.message.message_id,
                error=f.getErrorMessage(),
            ),
        )
        self._heartbeat_later(held)


class QueueDepth:
    """Polls ApproximateNumberOfMessages into ``snsd_sqs_queue_depth`` (a TimerService's call)."""

    def __init__(self, queue):
        self.queue = queue

    def __call__(self):
        def failed(f):
            log.debug("queue depth unavailable: {error}", error=f.getErrorMessage())

        # A TimerService whose call fails stops for good: the errback keeps it going.
        return self.queue.depth().addCallbacks(metrics.SQS_QUEUE_DEPTH.set, failed)


class NotAListener:
    """A worker's answer to an SNS POST: it takes its work from the queue, not over HTTP."""

    def __init__(self, worker: QueueWorker):
        self.worker = worker

    def refusal(self):
        from snsd.admission import Kind, Outcome

        return Outcome(Kind.REFUSED, status=404, reason="this snsd is a worker (--role worker): POST to a listener")
