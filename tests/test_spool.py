"""The SQLite spool: records stay until completed or dead-lettered, across restarts."""

import json
import sqlite3

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from snsd.envelope import parse_envelope
from snsd.records import S3ObjectRecord
from snsd.spool import SQLiteSpool, list_dead_letters


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
async def test_added_records_are_claimed_in_order_and_leave_when_completed(path):
    spool, recovery = await opened(path)
    assert recovery.pending == 0
    ids = await spool.add(envelope(), records("a", "b", "c"))
    assert ids == sorted(ids) and len(ids) == 3
    batch = await spool.claim(0, 2)
    assert [s.record.key for s in batch] == ["a", "b"]
    assert [s.attempts for s in batch] == [1, 1]
    assert [s.record.key for s in await spool.claim(batch[-1].id, 10)] == ["c"]
    for record_id in ids:
        await spool.complete(record_id)
    assert await spool.counts() == {"records": 0, "dead_letters": 0}
    await spool.close()


@pytest_twisted.ensureDeferred
async def test_unfinished_records_run_again_after_a_restart(path):
    spool, _ = await opened(path)
    await spool.add(envelope(), records("a", "b"))
    await spool.claim(0, 1)  # "a" was running when the process died
    await spool.close()
    spool, recovery = await opened(path)
    assert recovery.pending == 2
    again = await spool.claim(0, 10)
    assert [(s.record.key, s.attempts) for s in again] == [("a", 2), ("b", 1)]
    await spool.close()


@pytest_twisted.ensureDeferred
async def test_dead_letters_keep_the_envelope_reason_and_error(path):
    spool, _ = await opened(path)
    (record_id,) = await spool.add(envelope("m-9"), records("x", message_id="m-9"))
    await spool.claim(0, 1)
    await spool.dead_letter(record_id, "job_error", "NoSuchKey")
    await spool.add_dead_letters(envelope("m-10"), records("y", message_id="m-10"), "breaker_open")
    assert await spool.counts() == {"records": 0, "dead_letters": 2}
    await spool.close()
    letters = list_dead_letters(sqlite3.connect(path))
    assert [(d.record.key, d.reason, d.error, d.attempts) for d in letters] == [
        ("x", "job_error", "NoSuchKey", 1),
        ("y", "breaker_open", None, 0),
    ]
    assert json.loads(letters[0].envelope)["MessageId"] == "m-9"


@pytest_twisted.ensureDeferred
async def test_recent_message_ids_survive_a_restart_and_old_ones_expire(path):
    clock = Clock()
    spool, _ = await opened(path, clock)
    await spool.add(envelope("old"), records("a", message_id="old"))
    clock.advance(3000)
    await spool.remember(envelope("new"))
    await spool.close()
    clock.advance(1000)  # "old" is now 4000 s old, past the 3600 s TTL
    spool, recovery = await opened(path, clock)
    assert [m for m, _ in recovery.recent_message_ids] == ["new"]
    await spool.close()


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
async def test_in_memory_spool_works_the_same():
    spool, _ = await opened(":memory:")
    await spool.add(envelope(), records("a", "b"))
    moved = await spool.dead_letter_remaining(0, "drain_timeout")
    assert [row[2] for row in moved] and len(moved) == 2
    assert await spool.counts() == {"records": 0, "dead_letters": 2}
    await spool.close()


@pytest_twisted.ensureDeferred
async def test_the_database_is_in_wal_mode(path):
    spool, _ = await opened(path)
    await spool.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest_twisted.ensureDeferred
async def test_prune_forgets_old_finished_messages_only(path):
    clock = Clock()
    spool, _ = await opened(path, clock)
    (done_id,) = await spool.add(envelope("done"), records("a", message_id="done"))
    await spool.add(envelope("waiting"), records("b", message_id="waiting"))
    await spool.complete(done_id)
    clock.advance(4000)
    await spool.remember(envelope("recent"))
    assert await spool.prune(3600) == 1  # "done"; "waiting" still has a record, "recent" is recent
    await spool.close()
    rows = sqlite3.connect(path).execute("SELECT message_id FROM messages ORDER BY message_id").fetchall()
    assert rows == [("recent",), ("waiting",)]


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


@pytest_twisted.ensureDeferred
async def test_a_message_accepted_within_the_dedup_ttl_is_not_added_again_until_forgotten(path):
    clock = Clock()
    clock.advance(1_000_000)
    spool = SQLiteSpool(reactor, path, clock=clock)
    await spool.open(dedup_ttl=600)
    first = await spool.add(envelope("m-1"), records("a"))
    assert len(first) == 1
    assert await spool.add(envelope("m-1"), records("a")) is None  # a redelivery: nothing written
    assert await spool.counts() == {"records": 1, "dead_letters": 0}

    clock.advance(601)  # past the TTL and not pruned yet: new again
    assert len(await spool.add(envelope("m-1"), records("a"))) == 1
    assert await spool.add(envelope("m-1"), records("a")) is None
    await spool.forget("m-1")  # answered 5xx after all: SNS's retry must get in
    assert len(await spool.add(envelope("m-1"), records("a"))) == 1
    assert await spool.counts() == {"records": 3, "dead_letters": 0}
    await spool.close()
