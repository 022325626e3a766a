"""The sized worker pool that runs jobs, owned by a service.

A named pool of our own, not ``reactor.getThreadPool()``: Twisted's resolver and
``prometheus_client``'s ``MetricsResource`` use the reactor's pool, and busy jobs there
would stall DNS lookups and ``/metrics``.

Worker threads run at a lower CPU priority than the reactor (``--job-nice``).  On a busy
host, ten CPU-heavy jobs and the reactor are a dozen runnable threads; at equal priority the
scheduler gives the reactor a dozenth of the CPU and SNS sees answers take hundreds of
milliseconds.  With the jobs niced, the reactor runs whenever it has work and the jobs take
every cycle it leaves; an idle endpoint costs them nothing (docs/performance.md, busy.py).
"""

from __future__ import annotations

import os
import sys
import threading

from twisted.application.service import Service
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from snsd.logs import Logger

log = Logger()

# Linux keeps a niceness per thread, addressed by its native id; elsewhere PRIO_PROCESS with a
# thread id would renice some other process, so niceness is Linux-only.
CAN_NICE_THREADS = sys.platform.startswith("linux")


def lower_this_threads_priority(nice: int) -> None:
    """Add ``nice`` to the calling thread's niceness (capped at 19; lowering priority needs no privilege)."""
    tid = threading.get_native_id()
    current = os.getpriority(os.PRIO_PROCESS, tid)
    os.setpriority(os.PRIO_PROCESS, tid, min(19, current + nice))


class _WorkerThread(threading.Thread):
    """A daemon thread, niced before it runs anything.

    Daemon: a job still running when the drain timeout expires must not keep the process
    alive after twistd stops; its record stays spooled and runs again next start.
    """

    nice = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, daemon=True, **kwargs)

    def run(self):
        if self.nice:
            try:
                lower_this_threads_priority(self.nice)
            except OSError as e:
                log.warn("could not lower worker thread priority: {error}", error=e)
        super().run()


class WorkerPool(Service):
    name = "pool"

    def __init__(self, reactor, workers: int, nice: int = 0):
        self._reactor = reactor
        self.workers = workers
        if nice and not CAN_NICE_THREADS:
            log.warn("--job-nice {nice} ignored: per-thread niceness needs Linux", nice=nice)
            nice = 0
        self.nice = nice
        self._stopping = False
        self._pool = ThreadPool(minthreads=0, maxthreads=workers, name="snsd-jobs")
        self._pool.threadFactory = type("WorkerThread", (_WorkerThread,), {"nice": nice})

    def is_ready(self) -> bool:
        return bool(self.running) and self._pool.started and not self._stopping

    def startService(self):
        Service.startService(self)
        self._pool.start()

    def submit(self, fn, *args, **kwargs):
        """Run ``fn`` in a worker thread; a Deferred fires with its result on the reactor."""
        return deferToThreadPool(self._reactor, self._pool, fn, *args, **kwargs)

    def stop(self, join: bool = True) -> None:
        """Stop the pool; ``join=False`` leaves still-running (daemon) threads behind."""
        if self._stopping:
            return
        self._stopping = True
        if not self._pool.started:
            return
        if join:
            self._pool.stop()
        else:
            # ThreadPool.stop() tells the threads to quit once their jobs end, then joins them; the
            # join happens in a daemon thread of its own, so nothing waits for a job that outlived
            # the drain (the process may exit under it).
            threading.Thread(target=self._pool.stop, name="snsd-jobs-stop", daemon=True).start()

    def stopService(self):
        Service.stopService(self)
        self.stop()
