"""What only the SQLite spool does: group commits, checkpoints off the reactor, WAL mode, a lean file.

What every spool does (add, claim, complete, dead letters, recovery, dedup) is in
``test_spool_protocol.py``, run against this implementation among others."""

import json
import os
import sqlite3

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from snsd.envelope import parse_envelope
from snsd.records import S3ObjectRecord
from snsd.spool import SQLiteSpool


def envelope(message_id="m-1", message="{}"):
    body = json.dumps(
        {
            "Type": "Notification",
            "MessageId": message_id,
            "TopicArn": "arn:aws:sns:us-east-1:1:t",
            "Message": message,
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


@pytest_twisted.ensureDeferred
async def test_what_a_failing_operation_wrote_before_it_failed_is_undone(path):
    spool, _ = await opened(path)

    def half_done(conn):
        conn.execute("INSERT INTO messages (message_id, accepted_at, remember_until) VALUES ('half', 0, 0)")
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    before = spool.add(envelope("m-1"), records("a", message_id="m-1"))
    broken = spool._submit(half_done)
    after = spool.add(envelope("m-2"), records("b", message_id="m-2"))
    with pytest.raises(sqlite3.OperationalError):
        await broken
    assert len(await before) == 1 and len(await after) == 1
    await spool.close()
    assert rows(path, "SELECT message_id FROM messages ORDER BY message_id") == [("m-1",), ("m-2",)]


@pytest_twisted.ensureDeferred
async def test_a_commit_that_fails_fails_its_whole_group_and_the_next_group_commits(path):
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE parent (id INTEGER PRIMARY KEY);"
        "CREATE TABLE child (parent_id INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);"
    )
    conn.close()
    spool, _ = await opened(path)
    spool._conn.execute("PRAGMA foreign_keys = ON")  # so COMMIT itself fails, with the transaction still open
    with_it = spool.add(envelope("m-1"), records("a", message_id="m-1"))
    orphan = spool._submit(lambda conn: conn.execute("INSERT INTO child VALUES (42)") and None)
    with pytest.raises(sqlite3.IntegrityError):
        await orphan
    with pytest.raises(sqlite3.IntegrityError):
        await with_it  # none of the group half-done
    assert len(await spool.add(envelope("m-2"), records("b", message_id="m-2"))) == 1
    await spool.close()
    assert rows(path, "SELECT message_id FROM messages") == [("m-2",)]
    assert rows(path, "SELECT COUNT(*) FROM child") == [(0,)]


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


def clocked(path):
    """A spool whose group commits run when the test advances its clock."""
    clock = Clock()
    spool = SQLiteSpool(clock, path, clock=clock)
    opening = spool.open()
    clock.advance(0)
    fired(opening)
    return spool, clock


def test_a_completion_not_asked_to_wait_commits_in_the_next_turn(path):
    spool, clock = clocked(path)
    adding = spool.add(envelope(), records("a"))
    clock.advance(0)
    (record_id,) = fired(adding)
    completing = spool.complete(record_id)
    clock.advance(0)
    assert completing.called
    spool.close()


def test_closing_leaves_no_commit_scheduled_and_the_spool_opens_again(path):
    spool, clock = clocked(path)
    adding = spool.add(envelope(), records("a"))
    clock.advance(0)
    (record_id,) = fired(adding)
    completing = spool.complete(record_id, lazy=True)  # scheduled LAZY_DELAY ahead
    fired(spool.close())
    assert completing.called and clock.getDelayedCalls() == []
    reopening = spool.open()
    clock.advance(0)
    assert fired(reopening).pending == 0
    again = spool.add(envelope("m-2"), records("b", message_id="m-2"))
    clock.advance(0)
    assert len(fired(again)) == 1
    spool.close()


def test_closing_commits_what_waits_for_a_wal_reset(path):
    spool, clock = clocked(path)
    spool._paused = True  # a WAL reset is running in the checkpoint thread
    adding = spool.add(envelope(), records("a"))
    clock.advance(0)
    assert not adding.called  # waiting for the reset
    fired(spool.close())  # shutting down: commits it anyway
    assert len(fired(adding)) == 1
    assert rows(path, "SELECT COUNT(*) FROM records") == [(1,)]


def burst_of_envelopes(spool, clock, n=1000):
    """n finished messages whose envelopes left free pages behind."""
    adding = [spool.add(envelope(f"m-{i}", BIG_MESSAGE), records("k", message_id=f"m-{i}")) for i in range(n)]
    for _ in range(n // 256):
        clock.advance(0)
    ids = [record_id for added in adding for record_id in fired(added)]
    completing = spool.complete(*ids)
    clock.advance(0)
    fired(completing)


def test_a_prune_gives_pages_back_a_slice_per_reactor_turn(path, monkeypatch):
    monkeypatch.setattr("snsd.spool.FREE_PAGES_KEPT", 0)
    monkeypatch.setattr("snsd.spool.VACUUM_SLICE", 100)
    monkeypatch.setattr("snsd.spool.CHECKPOINT_EVERY", 10**9)  # a Clock has no thread pool
    spool, clock = clocked(path)
    burst_of_envelopes(spool, clock)
    ((free,),) = spool._conn.execute("PRAGMA freelist_count").fetchall()
    turns = []  # the turns the prune waits for, handed out one at a time below
    monkeypatch.setattr(spool, "_next_turn", lambda: turns.append(defer.Deferred()) or turns[-1])
    pruning = spool.prune()
    clock.advance(0)  # the forgetting commits; the first slice is given back
    for slices in range(1, free // 100 + 1):
        assert spool.vacuums == slices and not pruning.called
        turns[-1].callback(None)
    assert fired(pruning) == 0 and spool.vacuums == free // 100 + 1
    assert spool._conn.execute("PRAGMA freelist_count").fetchall() == [(0,)]
    spool.close()


def test_the_turn_a_prune_waits_for_is_the_reactors_next(path):
    spool, clock = clocked(path)
    turn = spool._next_turn()
    assert not turn.called
    clock.advance(0)
    assert turn.called
    spool.close()


@pytest.mark.parametrize("meanwhile", ["a WAL reset starts", "the spool closes"])
def test_a_prune_stops_giving_pages_back_when(path, monkeypatch, meanwhile):
    monkeypatch.setattr("snsd.spool.FREE_PAGES_KEPT", 0)
    monkeypatch.setattr("snsd.spool.VACUUM_SLICE", 100)
    monkeypatch.setattr("snsd.spool.CHECKPOINT_EVERY", 10**9)  # a Clock has no thread pool
    spool, clock = clocked(path)
    burst_of_envelopes(spool, clock)
    turns = []
    monkeypatch.setattr(spool, "_next_turn", lambda: turns.append(defer.Deferred()) or turns[-1])
    pruning = spool.prune()
    clock.advance(0)  # one slice given back; the next waits for a turn
    assert spool.vacuums == 1 and not pruning.called
    if meanwhile == "a WAL reset starts":
        spool._paused = True  # the reset holds the write lock: a vacuum now would wait for it on the reactor
        turns[-1].callback(None)
        spool._paused = False
    else:
        spool.close()
        turns[-1].callback(None)
    assert fired(pruning) == 0 and spool.vacuums == 1
    spool.close()


@pytest_twisted.ensureDeferred
async def test_the_database_is_in_wal_mode(path):
    spool, _ = await opened(path)
    await spool.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest_twisted.ensureDeferred
async def test_the_daemons_connection_waits_for_locks_and_commits_without_fsync(path):
    spool, _ = await opened(path)
    settings = {name: spool._conn.execute(f"PRAGMA {name}").fetchone()[0] for name in ("busy_timeout", "synchronous")}
    # snsd-admin's short transactions make it wait, not fail; NORMAL: no fsync per commit (WAL).
    assert settings == {"busy_timeout": 5000, "synchronous": 1}
    await spool.close()


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


def rows(path, sql):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_an_envelope_stays_only_while_a_record_of_its_message_is_owed_a_result(path):
    spool, _ = await opened(path)
    first, second = await spool.add(envelope("m-1"), records("a", "b"))
    await spool.add(envelope("m-2"), ())  # nothing owed: no envelope kept at all
    assert rows(path, "SELECT envelope LIKE '%m-1%', pending FROM envelopes") == [(1, 2)]
    await spool.complete(first)
    assert rows(path, "SELECT envelope LIKE '%m-1%', pending FROM envelopes") == [(1, 1)]
    await spool.dead_letter(second, "job_error", "gone")  # the dead letter has its own copy
    assert rows(path, "SELECT id FROM envelopes") == []
    assert rows(path, "SELECT message_id FROM dead_letters WHERE envelope LIKE '%m-1%'") == [("m-1",)]
    # Remembered: ids and times only.
    assert [column for _, column, *_ in rows(path, "PRAGMA table_info(messages)")] == [
        "message_id",
        "accepted_at",
        "remember_until",
    ]
    await spool.close()


@pytest_twisted.ensureDeferred
async def test_a_redelivery_after_its_time_keeps_the_envelope_for_every_record_owed(path):
    clock = Clock()
    spool, _ = await opened(path, clock)
    (first,) = await spool.add(envelope("m-1"), records("a"))
    clock.advance(3601)
    (second,) = await spool.add(envelope("m-1"), records("a"))  # new again, the first still owed
    assert rows(path, "SELECT pending FROM envelopes") == [(1,), (1,)]
    await spool.complete(first)
    await spool.dead_letter(second, "job_error", "gone")
    assert rows(path, "SELECT COUNT(*) FROM dead_letters WHERE envelope IS NOT NULL") == [(1,)]
    assert rows(path, "SELECT COUNT(*) FROM envelopes") == [(0,)]
    await spool.close()


# About what SNS sends for one S3 object: a 2 KB envelope.
BIG_MESSAGE = json.dumps({"Records": [{"s3": {"object": {"key": "k" * 1500}}}]})


@pytest_twisted.ensureDeferred
async def test_a_remembered_message_costs_under_200_bytes_and_a_burst_gives_its_space_back(path, monkeypatch):
    monkeypatch.setattr("snsd.spool.FREE_PAGES_KEPT", 16)
    monkeypatch.setattr("snsd.spool.VACUUM_SLICE", 1000)  # several slices, a reactor turn apart
    # No checkpoint: a WAL reset running meanwhile would (rightly) stop the vacuum early.
    monkeypatch.setattr("snsd.spool.CHECKPOINT_EVERY", 10**9)
    clock = Clock()
    spool, _ = await opened(path, clock)
    n = 5000
    adds = [
        spool.add(envelope(f"{i:08d}-1b4e28ba-2fa1-11d2-883f-0016d3cca427", BIG_MESSAGE), records("k"))
        for i in range(n)
    ]
    ids = [record_id for added in await defer.gatherResults(adds) for record_id in added]
    ((grown,),) = rows(path, "PRAGMA page_count")
    await spool.complete(*ids)  # a burst of envelopes, all finished
    await spool.prune()  # nothing to forget yet; gives the envelopes' pages back
    await spool.close()
    ((pages,),), ((page_size,),), ((free,),) = (
        rows(path, f"PRAGMA {p}") for p in ("page_count", "page_size", "freelist_count")
    )
    assert (pages - free) * page_size / n < 200  # what the remembered ids take
    assert free == 16 and pages < grown / 10  # the rest went back to the file system
    assert rows(path, "SELECT COUNT(*) FROM messages") == [(n,)]


@pytest_twisted.ensureDeferred
async def test_prune_works_in_slices_so_no_operation_holds_the_reactor_long(path, monkeypatch):
    monkeypatch.setattr("snsd.spool.PRUNE_SLICE", 7)
    clock = Clock()
    spool, _ = await opened(path, clock)
    await defer.gatherResults([spool.add(envelope(f"m-{i}"), ()) for i in range(30)])
    clock.advance(3601)
    commits = spool.commits
    assert await spool.prune() == 30
    assert spool.commits - commits >= 5  # 7 + 7 + 7 + 7 + 2, then the vacuum's look at the free pages
    assert rows(path, "SELECT COUNT(*) FROM messages") == [(0,)]
    await spool.close()


@pytest_twisted.ensureDeferred
async def test_a_wal_grown_past_its_limit_is_reset_while_commits_wait_without_blocking_the_reactor(path, monkeypatch):
    import threading

    from snsd import spool as spool_module

    monkeypatch.setattr("snsd.spool.CHECKPOINT_EVERY", 20)
    monkeypatch.setattr("snsd.spool.WAL_RESET_BYTES", 0)
    real_checkpoint = spool_module._wal_checkpoint
    seen = {}
    spool, _ = await opened(path)
    queued_meanwhile = threading.Event()

    def submit_during_the_reset():
        seen["add"] = spool.add(envelope("during"), records("x", message_id="during"))
        # Two turns later: had the add not waited, its group commit would have run by then.
        reactor.callLater(0, reactor.callLater, 0, queued_meanwhile.set)

    def checkpoint(path, mode, wait):
        if mode == "TRUNCATE":
            reactor.callFromThread(submit_during_the_reset)
            assert queued_meanwhile.wait(10)
            seen["committed during the reset"] = seen["add"].called
        return real_checkpoint(path, mode, wait)

    monkeypatch.setattr(spool_module, "_wal_checkpoint", checkpoint)
    await defer.gatherResults([spool.add(envelope(f"m-{i}"), records("k", message_id=f"m-{i}")) for i in range(25)])
    busy, frames, copied = await spool.last_checkpoint  # the passive checkpoint's figures, after the reset
    assert busy == 0 and copied == frames
    assert spool.wal_resets == 1
    assert seen["committed during the reset"] is False
    assert seen["add"].called  # committed as the reset ended
    assert len(await seen["add"]) == 1
    await spool.close()
    assert rows(path, "SELECT COUNT(*) FROM records") == [(26,)]


@pytest_twisted.ensureDeferred
async def test_a_wal_under_its_limit_is_left_alone(path, monkeypatch):
    monkeypatch.setattr("snsd.spool.CHECKPOINT_EVERY", 20)
    spool, _ = await opened(path)
    await defer.gatherResults([spool.add(envelope(f"m-{i}"), records("k", message_id=f"m-{i}")) for i in range(25)])
    await spool.last_checkpoint
    assert spool.wal_resets == 0 and os.path.getsize(path + "-wal") > 0
    monkeypatch.setattr("snsd.spool.WAL_RESET_BYTES", os.path.getsize(path + "-wal"))  # exactly at the limit
    await defer.gatherResults([spool.add(envelope(f"n-{i}"), ()) for i in range(25)])
    await spool.last_checkpoint
    assert spool.wal_resets == 0
    await spool.close()


def test_an_inline_spool_checkpoints_by_itself_having_no_checkpoint_thread(path, monkeypatch):
    monkeypatch.setattr("snsd.spool.CHECKPOINT_EVERY", 2)
    spool = SQLiteSpool(None, path, clock=Clock(), inline=True)  # no reactor, so no thread pool
    fired(spool.open())
    assert spool._conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (1000,)  # SQLite's own default
    for i in range(3):
        fired(spool.add(envelope(f"m-{i}"), records("k", message_id=f"m-{i}")))
    assert spool.last_checkpoint is None
    fired(spool.close())


@pytest_twisted.ensureDeferred
async def test_the_checkpoint_comes_at_the_operation_that_reaches_the_count(path, monkeypatch):
    monkeypatch.setattr("snsd.spool.CHECKPOINT_EVERY", 20)
    spool, _ = await opened(path)  # one operation: the recovery
    await defer.gatherResults([spool.add(envelope(f"m-{i}"), records("k", message_id=f"m-{i}")) for i in range(18)])
    assert spool.last_checkpoint is None  # 19
    await spool.add(envelope("m-18"), records("k", message_id="m-18"))
    assert spool.last_checkpoint is not None  # 20
    await spool.last_checkpoint
    await spool.close()


def test_a_lazy_completion_does_not_hurry_another(path):
    from snsd.spool import LAZY_DELAY

    spool, clock = clocked(path)
    adding = spool.add(envelope(), records("a", "b"))
    clock.advance(0)
    first, second = fired(adding)
    one, two = spool.complete(first, lazy=True), spool.complete(second, lazy=True)
    clock.advance(0)
    assert not one.called and not two.called
    clock.advance(LAZY_DELAY)
    assert one.called and two.called
    spool.close()


def test_a_prune_keeps_the_free_pages_it_is_told_to_keep(path, monkeypatch):
    monkeypatch.setattr("snsd.spool.CHECKPOINT_EVERY", 10**9)  # a Clock has no thread pool
    spool, clock = clocked(path)
    burst_of_envelopes(spool, clock, n=300)
    ((free,),) = spool._conn.execute("PRAGMA freelist_count").fetchall()
    monkeypatch.setattr("snsd.spool.FREE_PAGES_KEPT", free)  # exactly as many as there are
    pruning = spool.prune()
    clock.advance(0)
    assert fired(pruning) == 0 and spool.vacuums == 0
    assert spool._conn.execute("PRAGMA freelist_count").fetchall() == [(free,)]
    monkeypatch.setattr("snsd.spool.FREE_PAGES_KEPT", free - 1)  # one too many
    pruning = spool.prune()
    clock.advance(0)
    assert fired(pruning) == 0 and spool.vacuums == 1
    assert spool._conn.execute("PRAGMA freelist_count").fetchall() == [(free - 1,)]
    spool.close()


def test_an_inline_spool_gives_every_slice_back_at_once(path, monkeypatch):
    monkeypatch.setattr("snsd.spool.FREE_PAGES_KEPT", 0)
    monkeypatch.setattr("snsd.spool.VACUUM_SLICE", 100)
    spool = SQLiteSpool(None, path, clock=Clock(), inline=True)  # no reactor to wait a turn on
    fired(spool.open())
    ids = [
        record_id for i in range(300) for record_id in fired(spool.add(envelope(f"m-{i}", BIG_MESSAGE), records("k")))
    ]
    fired(spool.complete(*ids))
    assert fired(spool.prune()) == 0 and spool.vacuums > 1
    assert spool._conn.execute("PRAGMA freelist_count").fetchall() == [(0,)]
    fired(spool.close())


@pytest_twisted.ensureDeferred
async def test_one_checkpoint_at_a_time_and_the_count_starts_again_after_each(path, monkeypatch):
    import threading

    from snsd import spool as spool_module

    monkeypatch.setattr("snsd.spool.CHECKPOINT_EVERY", 20)
    real_checkpoint = spool_module._wal_checkpoint
    started, release = [], threading.Event()

    def slow_checkpoint(path, mode, wait):
        started.append(mode)
        assert release.wait(10)
        return real_checkpoint(path, mode, wait)

    monkeypatch.setattr(spool_module, "_wal_checkpoint", slow_checkpoint)
    spool, _ = await opened(path)  # the recovery: one operation

    async def add(n, prefix):
        await defer.gatherResults([spool.add(envelope(f"{prefix}{i}"), ()) for i in range(n)])

    await add(19, "a")  # 20 operations: the first checkpoint starts, and waits
    first = spool.last_checkpoint
    await add(25, "b")  # past the count again while it runs: no second one
    assert spool.last_checkpoint is first  # (it cannot have finished: it waits for release)
    release.set()
    await first
    await add(1, "c")  # 26 since the first started: the second starts at once
    second = spool.last_checkpoint
    assert second is not first
    await second
    await add(19, "d")  # the count started again at the second: 19 since
    assert spool.last_checkpoint is second
    await add(1, "e")  # 20
    assert spool.last_checkpoint is not second
    await spool.last_checkpoint
    assert started == ["PASSIVE"] * 3
    await spool.close()


@pytest_twisted.ensureDeferred
async def test_a_wal_reset_that_fails_is_logged_and_commits_go_on(path, monkeypatch):
    from twisted.logger import globalLogPublisher

    from snsd import spool as spool_module

    monkeypatch.setattr("snsd.spool.CHECKPOINT_EVERY", 20)
    monkeypatch.setattr("snsd.spool.WAL_RESET_BYTES", 0)
    real_checkpoint = spool_module._wal_checkpoint

    def failing(path, mode, wait):
        if mode == "TRUNCATE":
            raise sqlite3.OperationalError("disk I/O error")
        return real_checkpoint(path, mode, wait)

    monkeypatch.setattr(spool_module, "_wal_checkpoint", failing)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        spool, _ = await opened(path)
        await defer.gatherResults([spool.add(envelope(f"m-{i}"), ()) for i in range(25)])
        await spool.last_checkpoint
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [e["log_format"] for e in events if e.get("log_failure")] == ["resetting the spool's WAL failed"]
    assert spool.wal_resets == 0
    assert await spool.add(envelope("after"), ()) == []  # not paused for good
    await spool.close()
