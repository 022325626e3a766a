"""The daemon service in process: what it does once the spool is open."""

import gc

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from snsd.config import SNSDOptions
from snsd.daemon import build_daemon


@pytest_twisted.ensureDeferred
async def test_objects_alive_at_ready_are_frozen_out_of_the_cyclic_gc(tmp_path):
    options = SNSDOptions(environ={})
    options.parseOptions(
        ["--port", "tcp:0:interface=127.0.0.1", "--spool", ":memory:", "--dry-run",
         "--results", str(tmp_path / "results.jsonl"), "--job", "snsd.jobs.head:head_object"]
    )  # fmt: skip
    gc.unfreeze()
    daemon = build_daemon(reactor, options.settings)
    daemon.startService()
    try:
        for _ in range(100):  # reactor turns, not time: the spool opens on the next one
            if daemon.dispatcher.ready:
                break
            await deferLater(reactor, 0, lambda: None)
        assert daemon.dispatcher.ready
        assert gc.get_freeze_count() > 0
    finally:
        await daemon.stopService()
        gc.unfreeze()
