"""The worker pool's stop: with a join it waits for running jobs; without one it returns at once and
leaves them behind (a drain that timed out), and its threads still quit once their jobs end."""

import threading

from snsd.pool import WorkerPool


class _Reactor:
    """deferToThreadPool only hands results back through callFromThread; nobody reads them here."""

    def callFromThread(self, f, *args, **kwargs):
        pass


def _pool_threads():
    return [t for t in threading.enumerate() if "snsd-jobs" in t.name and t.name != "snsd-jobs-stop"]


def test_stop_without_join_returns_while_a_job_runs_and_its_thread_quits_after_the_job():
    pool = WorkerPool(_Reactor(), workers=1)
    pool.startService()
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def job():
        started.set()
        release.wait(10)  # joined, stop() would return only after this times out
        finished.set()

    pool.submit(job)
    assert started.wait(30)
    pool.stop(join=False)
    pool.stopService()  # the daemon's teardown stops the service afterwards: no join there either
    assert not finished.is_set()
    assert not pool.is_ready()
    threads = _pool_threads()
    assert threads
    release.set()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    assert finished.is_set()


def test_stop_with_join_waits_for_the_running_job():
    pool = WorkerPool(_Reactor(), workers=1)
    pool.startService()
    started, finished = threading.Event(), threading.Event()

    def job():
        started.set()
        threading.Event().wait(0.2)  # a job that takes a while: stop() must outlast it
        finished.set()

    pool.submit(job)
    assert started.wait(30)
    pool.stopService()
    assert finished.is_set()
    assert _pool_threads() == []
