"""The sized worker pool that runs jobs, owned by a service.

A named pool of our own, not ``reactor.getThreadPool()``: Twisted's resolver and
``prometheus_client``'s ``MetricsResource`` use the reactor's pool, and busy jobs there
would stall DNS lookups and ``/metrics``.
"""

from __future__ import annotations

import functools
import threading

from twisted.application.service import Service
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool


class _DaemonThreadPool(ThreadPool):
    # Daemon threads: a job still running when the drain timeout expires must not keep the
    # process alive after twistd stops; its record stays spooled and runs again next start.
    threadFactory = functools.partial(threading.Thread, daemon=True)


class WorkerPool(Service):
    name = "pool"

    def __init__(self, reactor, workers: int):
        self._reactor = reactor
        self.workers = workers
        self._pool = _DaemonThreadPool(minthreads=0, maxthreads=workers, name="snsd-jobs")

    def is_ready(self) -> bool:
        return bool(self.running) and self._pool.started

    def startService(self):
        Service.startService(self)
        self._pool.start()

    def submit(self, fn, *args, **kwargs):
        """Run ``fn`` in a worker thread; a Deferred fires with its result on the reactor."""
        return deferToThreadPool(self._reactor, self._pool, fn, *args, **kwargs)

    def stop(self, join: bool = True) -> None:
        """Stop the pool; ``join=False`` leaves still-running (daemon) threads behind."""
        if not self._pool.started:
            return
        if join:
            self._pool.stop()
        else:
            # ThreadPool.stop() without its join: the team quits once current jobs end.
            self._pool.joined = True
            self._pool.started = False
            self._pool._team.quit()

    def stopService(self):
        Service.stopService(self)
        self.stop()
