"""The daemon service in process: what it does once the spool is open."""

import gc
import socket

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, globalLogPublisher

from snsd.config import SNSDOptions
from snsd.daemon import PRUNE_INTERVAL, build_daemon


def settings(tmp_path, *args):
    options = SNSDOptions(environ={})
    options.parseOptions(
        ["--port", "tcp:0:interface=127.0.0.1", "--admin-port", "tcp:0:interface=127.0.0.1",
         "--spool", ":memory:", "--dry-run",
         "--results", str(tmp_path / "results.jsonl"), "--job", "snsd.jobs.head:head_object", *args]
    )  # fmt: skip
    return options.settings


async def started(daemon):
    daemon.startService()
    for _ in range(100):  # reactor turns, not time: the spool opens on the next one
        if daemon.dispatcher.ready:
            return daemon
        await deferLater(reactor, 0, lambda: None)
    raise AssertionError("the spool did not open")


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest_twisted.ensureDeferred
async def test_objects_alive_at_ready_are_frozen_out_of_the_cyclic_gc(tmp_path):
    gc.unfreeze()
    daemon = build_daemon(reactor, settings(tmp_path))
    try:
        await started(daemon)
        assert gc.get_freeze_count() > 0
    finally:
        await daemon.stopService()
        gc.unfreeze()


def test_a_port_already_taken_stops_the_start_before_anything_runs(tmp_path, logged):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        daemon = build_daemon(reactor, settings(tmp_path, "--port", f"tcp:{port}:interface=127.0.0.1"))
        with pytest.raises(CannotListenError):
            daemon.startService()
    finally:
        taken.close()
    critical = [e for e in logged if e.get("log_level") is LogLevel.critical]
    assert [e["log_format"] for e in critical] == ["cannot listen on {port}: {error}"]
    assert not daemon.pool.running and not daemon.dispatcher.ready and not daemon.spool_service.running


@pytest_twisted.ensureDeferred
async def test_a_failed_prune_does_not_end_pruning(tmp_path):
    clock = Clock()
    daemon = await started(build_daemon(reactor, settings(tmp_path), clock=clock, freeze_gc=False))
    try:
        calls = []

        def prune():
            calls.append(clock.seconds())
            return defer.fail(OSError("disk I/O error")) if len(calls) == 1 else defer.succeed(0)

        daemon.spool.prune = prune
        clock.advance(PRUNE_INTERVAL)
        assert daemon.pruning.running
        clock.advance(PRUNE_INTERVAL)
        assert len(calls) == 2
    finally:
        await daemon.stopService()


def test_services_start_in_order_with_the_spool_first(tmp_path):
    daemon = build_daemon(reactor, settings(tmp_path), freeze_gc=False)
    names = [service.name for service in daemon]
    assert names == [
        "spool",
        "breaker",
        "pool",
        "job",
        "sink",
        "dispatcher",
        "signature-checks",
        "pruning",
        "deadlines",
        "http",
        "admin-http",
    ]


@pytest_twisted.ensureDeferred
async def test_stopping_stops_each_child_once_in_the_drain_order(tmp_path, logged):
    daemon = await started(build_daemon(reactor, settings(tmp_path), freeze_gc=False))
    stopped = []
    for service in daemon:
        original = service.stopService

        def recording(service=service, original=original):
            stopped.append(service.name)
            return original()

        service.stopService = recording
    await daemon.stopService()
    assert stopped == [
        "pruning",
        "http",
        "admin-http",
        "deadlines",
        "signature-checks",
        "spool",
        "pool",
        "job",
        "sink",
        "dispatcher",
        "breaker",
    ]
    assert not any(service.running for service in daemon) and not daemon.running
    lines = [e["log_format"] for e in logged if e.get("log_namespace") == "snsd.daemon"]
    assert any(line.startswith("draining: ") for line in lines) and lines[-1] == "stopped"


@pytest_twisted.ensureDeferred
async def test_a_failing_teardown_step_does_not_skip_the_later_ones(tmp_path, logged):
    daemon = await started(build_daemon(reactor, settings(tmp_path)))
    close = daemon.spool.close

    def broken_close():
        close()
        raise OSError("disk I/O error")

    daemon.spool.close = broken_close
    await daemon.stopService()
    assert not daemon.pool.running
    assert daemon.sink.closed
    assert any(e.get("log_format") == "error while {what}" and e["what"] == "closing the spool" for e in logged)
    assert any(e.get("log_format") == "stopped" for e in logged)


def test_an_admin_port_already_taken_stops_the_start_and_closes_the_main_port(tmp_path, logged):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        daemon = build_daemon(reactor, settings(tmp_path, "--admin-port", f"tcp:{port}:interface=127.0.0.1"))
        with pytest.raises(CannotListenError):
            daemon.startService()
    finally:
        taken.close()
    critical = [e for e in logged if e.get("log_level") is LogLevel.critical]
    assert [e["port"] for e in critical] == [f"tcp:{port}:interface=127.0.0.1"]
    assert daemon.http.port is None and not daemon.pool.running
