"""The data-quality job in worker processes: the reactor keeps an interpreter to itself.

Each job still occupies one thread of the daemon's pool, and that thread waits for the result,
so ``--workers`` bounds concurrency exactly as before; the parsing and checking happen in one
of ``--job-processes`` child interpreters, each with its own GIL.  A CPU-heavy job in a thread
shares the reactor's GIL, and on a busy host the reactor then waits for whichever job thread
holds it: bench/busy.py measured a p99 of 205-280 ms that way and 38-44 ms with the job in
processes (docs/performance.md).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from twisted.logger import Logger

from snsd.dq.rules import RuleBook
from snsd.records import S3ObjectRecord

log = Logger()

# How often a thread waiting on a child checks that the pool has noticed a dead child (below).
CHILD_WATCH = 1.0

_job = None  # this child process's DataQualityJob


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
    is: children spawned later (lazily, or after a crash) never re-read the rules file, so an edit
    after startup can neither skip validation nor give two generations of children different rules."""

    def __init__(self, rulebook: RuleBook | None, processes: int, nice: int = 0):
        self.rulebook = rulebook
        self.processes = processes
        self.nice = nice
        self.pools_replaced = 0  # broken pools replaced, each exactly once however many jobs saw it break
        self._target = _run_in_child  # what the children run for a record (tests script crashes with it)
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._alone: ProcessPoolExecutor | None = None  # one process for jobs retried after a crash
        self._alone_lock = threading.Lock()  # one retried job at a time
        self._retries_waiting = 0
        self._closed = False

    def _new_executor(self, processes: int) -> ProcessPoolExecutor:
        # spawn, not fork: a forked child would inherit the reactor, its threads and their locks.
        return ProcessPoolExecutor(
            processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_child,
            initargs=(self.rulebook, self.nice),
        )

    def _current(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("the data-quality worker processes are shut down")
            if self._executor is None:
                self._executor = self._new_executor(self.processes)
            return self._executor

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """The next job gets a fresh pool; called by every job that saw ``broken`` break, it acts
        for the first only (the executor object is the pool's generation)."""
        with self._lock:
            if self._executor is broken:
                log.error("a data-quality worker process died; starting new ones")
                self._executor = None
                self.pools_replaced += 1

    def __call__(self, record: S3ObjectRecord) -> dict:
        payload = record.to_dict()
        executor = self._current()
        try:
            try:
                future = executor.submit(self._target, payload)
            except BrokenProcessPool:
                # Broken before this job was handed over, so not by it: a fresh pool will do.
                self._replace(executor)
                executor = self._current()
                future = executor.submit(self._target, payload)
            return _result(executor, future)
        except BrokenProcessPool:
            # A child died (OOM kill, a crash in native code) and the executor failed every job
            # running or queued in the pool, not only the one that child was running; which one
            # that was is not known.  Failing them all would count each towards the circuit
            # breaker at once, so each is run again, alone.
            self._replace(executor)
        return self._run_alone(payload)

    def _run_alone(self, payload: dict) -> dict:
        """Run a job whose pool broke again, in a process of its own and one such job at a time,
        so a job that kills its process again fails alone (``worker_crashed``) and no other job
        with it.  The process is stopped once no retried job waits for it."""
        from snsd.dq.job import JobError

        with self._lock:
            self._retries_waiting += 1
        try:
            with self._alone_lock:
                with self._lock:
                    if self._closed:
                        raise RuntimeError("the data-quality worker processes are shut down")
                    if self._alone is None:
                        self._alone = self._new_executor(1)
                    executor = self._alone
                try:
                    return _result(executor, executor.submit(self._target, payload))
                except BrokenProcessPool:
                    with self._lock:
                        if self._closed:
                            raise RuntimeError("the data-quality worker processes are shut down") from None
                        self._alone = None
                    raise JobError(
                        "worker_crashed",
                        "the worker process running this job died, and died again when the job was run"
                        " again alone (killed, e.g. out of memory, or a crash in native code)",
                    ) from None
        finally:
            with self._lock:
                self._retries_waiting -= 1
                idle = None
                if self._retries_waiting == 0:
                    idle, self._alone = self._alone, None
            if idle is not None:
                idle.shutdown(wait=False)

    def close(self) -> None:
        """Stop the children now, running jobs included: a drain has already waited for them
        as long as it may, and their records stay spooled for the next start."""
        with self._lock:
            self._closed = True
            executors = [e for e in (self._executor, self._alone) if e is not None]
            self._executor = self._alone = None
        for executor in executors:
            # ProcessPoolExecutor has no terminate(); without one, interpreter exit would wait for
            # a running job however long it takes.  Its worker table is the only handle on them.
            for process in list(getattr(executor, "_processes", {}).values()):
                if process.is_alive():
                    os.kill(process.pid, signal.SIGTERM)
            executor.shutdown(wait=False, cancel_futures=True)


def _result(executor: ProcessPoolExecutor, future):
    """``future.result()``, without waiting forever on a child's death the executor missed.

    CPython's executor (3.11, and 3.12 alike) wakes its manager thread *before* it spawns a child
    for a new job, so a child spawned after that wake-up is not among the processes it watches
    until the next wake-up.  If that child dies first, the jobs in the other children wait until
    one of them finishes; tests/test_dq_processes.py hung on it 1 run in 3.  So every CHILD_WATCH
    seconds the waiting thread looks for a dead child and, if there is one, wakes the manager
    thread (private attributes, looked up defensively), which then fails the pool's jobs as broken.
    """
    while True:
        try:
            return future.result(timeout=CHILD_WATCH)
        except TimeoutError:
            processes = list((getattr(executor, "_processes", None) or {}).values())
            if any(process.exitcode is not None for process in processes):
                wakeup = getattr(executor, "_executor_manager_thread_wakeup", None)
                if wakeup is not None:
                    wakeup.wakeup()
