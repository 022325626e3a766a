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
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False

    def _current(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("the data-quality worker processes are shut down")
            if self._executor is None:
                # spawn, not fork: a forked child would inherit the reactor, its threads and their locks.
                self._executor = ProcessPoolExecutor(
                    self.processes,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_child,
                    initargs=(self.rulebook, self.nice),
                )
            return self._executor

    def __call__(self, record: S3ObjectRecord) -> dict:
        executor = self._current()
        try:
            return executor.submit(_run_in_child, record.to_dict()).result()
        except BrokenProcessPool:
            # A child died (OOM kill, a crash in native code): the jobs it was part of fail and
            # become dead letters; the next job gets a fresh pool.
            with self._lock:
                if self._executor is executor:
                    log.error("a data-quality worker process died; starting new ones for the next jobs")
                    self._executor = None
            raise

    def close(self) -> None:
        """Stop the children now, running jobs included: a drain has already waited for them
        as long as it may, and their records stay spooled for the next start."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is None:
            return
        # ProcessPoolExecutor has no terminate(); without one, interpreter exit would wait for
        # a running job however long it takes.  Its worker table is the only handle on them.
        for process in list(getattr(executor, "_processes", {}).values()):
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        executor.shutdown(wait=False, cancel_futures=True)
