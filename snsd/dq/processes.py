"""The data-quality job in worker processes: the reactor keeps an interpreter to itself.

Each job still occupies one thread of the daemon's pool, and that thread waits for the result,
so ``--workers`` bounds concurrency exactly as before; the parsing and checking happen in one
of ``--job-processes`` child interpreters, each with its own GIL.  A CPU-heavy job in a thread
shares the reactor's GIL, and on a busy host the reactor then waits for whichever job thread
holds it (docs/performance.md, bench/busy.py).

The children are supervised by pebble's ``ProcessPool``.  It records which child runs which
job, so a child that dies (SIGKILL, an OOM kill, a crash in native code) fails only the job it
was running, with ``ProcessExpired``, and pebble starts a replacement.  CPython's
``ProcessPoolExecutor`` and loky instead fail every job in the pool (``BrokenProcessPool``,
``TerminatedWorkerError``) without saying which one was in the dead child (docs/dq.md).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import CancelledError, Future
from concurrent.futures.process import BrokenProcessPool

from pebble import ProcessExpired, ProcessPool

from snsd.dq.rules import RuleBook
from snsd.logs import Logger
from snsd.records import S3ObjectRecord

log = Logger()

# How often a thread waiting for a job's result checks that pebble has not given up on its pool.
POOL_CHECK_INTERVAL = 1.0

_job = None  # this child process's DataQualityJob

_CRASHED = (
    "the worker process running this job died, and died again when the job was run again alone"
    " (killed, e.g. out of memory, or a crash in native code)"
)


def _start_child(rulebook: RuleBook | None, nice: int) -> None:
    global _job
    if nice:
        os.nice(nice)  # before pyarrow starts threads of its own: they inherit it
    from snsd.dq.job import DataQualityJob

    _job = DataQualityJob(rulebook)


def _run_in_child(record: dict) -> dict:
    return _job(S3ObjectRecord.from_dict(record))


class ProcessPoolJob:
    """Callable like a job (from worker threads); runs the built-in data-quality job in
    ``processes`` child processes, started on first use.

    ``rulebook`` is the rule book validated at startup (``load_rules``), handed to every child as it
    is: children spawned later (lazily, or to replace a dead one) never re-read the rules file, so an
    edit after startup can neither skip validation nor give two generations of children different
    rules.

    A job whose child died is run once more, alone in a process of its own (one such job at a time):
    an OOM kill may have hit it for the memory its neighbours used.  Only if it kills that process
    too does it fail, as ``worker_crashed``."""

    def __init__(self, rulebook: RuleBook | None, processes: int, nice: int = 0):
        self.rulebook = rulebook
        self.processes = processes
        self.nice = nice
        self.pools_replaced = 0  # pools replaced after pebble gave up on them (below)
        self._target = _run_in_child  # what the children run for a record (tests script crashes with it)
        self._lock = threading.Lock()
        self._pool: ProcessPool | None = None
        self._alone: ProcessPool | None = None  # the process running a retried job, while it runs
        self._alone_lock = threading.Lock()  # one retried job at a time
        self._waiting: set[Future] = set()  # results threads wait for: close() releases them
        self._closed = False

    def _new_pool(self, processes: int) -> ProcessPool:
        # spawn, not fork: a forked child would inherit the reactor, its threads and their locks.
        return ProcessPool(
            processes,
            initializer=_start_child,
            initargs=(self.rulebook, self.nice),
            context=multiprocessing.get_context("spawn"),
        )

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the data-quality worker processes are shut down")

    def _current(self) -> ProcessPool:
        with self._lock:
            self._check_open()
            if self._pool is None:
                self._pool = self._new_pool(self.processes)
            return self._pool

    def __call__(self, record: S3ObjectRecord) -> dict:
        payload = record.to_dict()
        for _ in range(2):
            pool = self._current()
            try:
                return self._run(pool, payload)
            except ProcessExpired as e:
                log.error(
                    "a data-quality worker process died (exit code {exitcode}) running s3://{bucket}/{key};"
                    " running the job again alone",
                    exitcode=e.exitcode,
                    bucket=record.bucket,
                    key=record.key,
                )
                return self._run_alone(payload)
            except BrokenProcessPool:
                # pebble gives up on a pool whose child dies while no job runs anywhere in it (between
                # jobs, or while starting): it fails the jobs still queued, this one among them, and
                # takes no more.  Not this job's doing: it goes to a fresh pool.
                self._replace(pool)
        from snsd.dq.job import JobError

        raise JobError("worker_crashed", "the worker processes died twice before this job could start")

    def _run(self, pool: ProcessPool, payload: dict) -> dict:
        try:
            future = pool.schedule(self._target, args=(payload,))
        except RuntimeError:  # "the Pool is not active": broken already, or stopped by close()
            self._check_open()
            raise BrokenProcessPool("the worker processes stopped") from None
        with self._lock:
            if self._closed:
                future.cancel()
            self._waiting.add(future)
        try:
            return _result(pool, future)
        except CancelledError:
            self._check_open()
            raise
        finally:
            with self._lock:
                self._waiting.discard(future)

    def _replace(self, broken: ProcessPool) -> None:
        """The next job gets a fresh pool; called by every job that saw ``broken`` break, it acts
        for the first only."""
        with self._lock:
            if self._pool is not broken:
                return
            log.error("the data-quality worker processes died; starting new ones")
            self._pool = None
            self.pools_replaced += 1
        _stop(broken)

    def _run_alone(self, payload: dict) -> dict:
        from snsd.dq.job import JobError

        with self._alone_lock:
            with self._lock:
                self._check_open()
                self._alone = pool = self._new_pool(1)
            try:
                return self._run(pool, payload)
            except (ProcessExpired, BrokenProcessPool):
                raise JobError("worker_crashed", _CRASHED) from None
            finally:
                with self._lock:
                    mine = self._alone is pool  # else close() has stopped it
                    if mine:
                        self._alone = None
                if mine:
                    _stop(pool)

    def close(self) -> None:
        """Stop the children now, running jobs included: a drain has already waited for them
        as long as it may, and their records stay spooled for the next start.  Threads still
        waiting for a job raise ``RuntimeError``."""
        with self._lock:
            self._closed = True
            pools = [p for p in (self._pool, self._alone) if p is not None]
            self._pool = self._alone = None
            waiting = list(self._waiting)
        for pool in pools:
            _stop(pool)
        for future in waiting:  # pebble leaves the futures of the jobs it stopped pending
            future.cancel()


def _result(pool: ProcessPool, future: Future) -> dict:
    """``future.result()``, unless pebble gives up on ``pool`` first.

    pebble 5.x can leave a job's future pending for ever: a job scheduled just as pebble breaks the
    pool (an idle child died) is taken by its scheduler thread after the pool has aborted the jobs it
    knew of, and is sent to a channel no child reads any more.  Seen once in a loaded CI run as a
    job hung after an idle child was killed.  So the waiting thread looks at the pool now and then,
    and a job stranded in a pool that is no longer active raises ``BrokenProcessPool``, which sends
    it to a fresh pool like every other job of a broken one."""
    while True:
        try:
            return future.result(timeout=POOL_CHECK_INTERVAL)
        except TimeoutError:
            if future.done():  # the job itself raised TimeoutError (an S3 read, say)
                raise
            if not pool.active:
                future.cancel()
                raise BrokenProcessPool("the worker processes stopped with this job still queued") from None


def _stop(pool: ProcessPool) -> None:
    """Stop ``pool``'s children now (SIGTERM, then SIGKILL after pebble's grace period)."""
    pool.stop()
    pool.join()
