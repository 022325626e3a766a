"""What only the SQLite spool does: group commits, checkpoints off the reactor, WAL mode.

What every spool does (add, claim, complete, dead letters, recovery, dedup) is in
``test_spool_protocol.py``, run against this implementation among others."""

import json
import sqlite3

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from snsd.envelope import parse_envelope
from snsd.records import S3ObjectRecord
from snsd.spool import SQLiteSpool


def envelope(message_id="m-1"):
    body = json.dumps(
        {
            "Type": "Notification",
            "MessageId": message_id,
            "TopicArn": "arn:aws:sns:us-east-1:1:t",
            "Message": "{}",
            "Timestamp": "2026-11-29T10:00:00.000Z",
        }
    ).encode()
    return parse_envelope(body)


def records(*keys, message_id="m-1"):
    return tuple(S3ObjectRecord(bucket="b", key=k, message_id=message_id) for k in keys)


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "spool.sqlite3")


async def opened(path, clock=None):
    spool = SQLiteSpool(reactor, path, clock=clock or Clock())
    recovery = await spool.open()
    return spool, recovery


@pytest_twisted.ensureDeferred
async def test_a_burst_is_committed_in_groups(path):
    spool, _ = await opened(path)
    before = spool.commits
    await defer.gatherResults([spool.add(envelope(f"m-{i}"), records("k", message_id=f"m-{i}")) for i in range(500)])
    assert await spool.counts() == {"records": 500, "dead_letters": 0}
    assert spool.commits - before < 50
    await spool.close()


@pytest_twisted.ensureDeferred
async def test_checkpoints_run_off_the_reactor_every_so_many_operations(path, monkeypatch):
    monkeypatch.setattr("snsd.spool.CHECKPOINT_EVERY", 20)
    spool, _ = await opened(path)
    # The daemon's connection never checkpoints by itself (that would fsync on the reactor).
    assert spool._conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
    assert spool.last_checkpoint is None
    await defer.gatherResults([spool.add(envelope(f"m-{i}"), records("k", message_id=f"m-{i}")) for i in range(25)])
    busy, wal_frames, copied = await spool.last_checkpoint
    assert busy == 0 and wal_frames > 0 and copied == wal_frames
    await spool.close()


@pytest_twisted.ensureDeferred
async def test_an_operation_that_fails_fails_alone_in_its_group_commit(path):
    spool, _ = await opened(path)
    before = spool.add(envelope("m-1"), records("a", message_id="m-1"))
    broken = spool._submit(lambda conn: conn.execute("INSERT INTO no_such_table VALUES (1)"))
    after = spool.add(envelope("m-2"), records("b", message_id="m-2"))
    with pytest.raises(sqlite3.OperationalError):
        await broken
    assert len(await before) == 1 and len(await after) == 1
    assert await spool.counts() == {"records": 2, "dead_letters": 0}
    await spool.close()


def fired(d):
    """The result of a Deferred that has fired (a plain value; no reactor needed)."""
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def test_a_lazy_completion_waits_for_company_or_its_timer(path):
    from snsd.spool import LAZY_DELAY

    clock = Clock()  # the spool schedules its group commits on it
    spool = SQLiteSpool(clock, path, clock=clock)
    opening = spool.open()
    clock.advance(0)
    fired(opening)
    adding = spool.add(envelope(), records("a", "b"))
    clock.advance(0)
    first, second = fired(adding)

    alone = spool.complete(first, lazy=True)
    clock.advance(0)
    assert not alone.called  # no transaction for it alone yet
    clock.advance(LAZY_DELAY)
    assert fired(alone) is None

    commits = spool.commits
    with_company = spool.complete(second, lazy=True)
    counting = spool.counts()  # not lazy: takes the completion along, in one transaction
    clock.advance(0)
    assert fired(with_company) is None
    assert fired(counting) == {"records": 0, "dead_letters": 0}
    assert spool.commits == commits + 1
    spool.close()


@pytest_twisted.ensureDeferred
async def test_the_database_is_in_wal_mode(path):
    spool, _ = await opened(path)
    await spool.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest_twisted.ensureDeferred
async def test_closing_commits_every_queued_operation_not_only_the_first_batch(path):
    from snsd.spool import MAX_BATCH

    spool, _ = await opened(path)
    adds = [spool.add(envelope(f"m-{i}"), records("k", message_id=f"m-{i}")) for i in range(MAX_BATCH + 10)]
    await spool.close()  # in the same reactor turn: nothing has been flushed yet
    assert all(d.called for d in adds)
    results = await defer.gatherResults(adds)
    assert len(results) == MAX_BATCH + 10
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM records").fetchone() == (MAX_BATCH + 10,)
    conn.close()
