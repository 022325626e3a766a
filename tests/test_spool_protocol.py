"""What every spool does, whatever stores it: the behaviour behind :class:`snsd.protocols.Spool`.

Each test runs against every implementation through the ``backend`` fixture.  A new backend
(SQS, say) is tested by adding one class with the four members of ``SQLiteFile`` below and
naming it in ``BACKENDS``; the tests stay as they are.  What only one implementation does (the
SQLite spool's group commit, checkpoints, schema versions) is tested in ``test_spool.py``.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock

from snsd.envelope import parse_envelope
from snsd.protocols import Spool
from snsd.records import S3ObjectRecord
from snsd.spool import SQLiteSpool, list_dead_letters

TTL = 600.0
START = 1_000_000.0  # the spool's clock: epoch seconds, far from zero


def envelope(message_id="m-1"):
    body = {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": "arn:aws:sns:us-east-1:1:t",
        "Message": "{}",
        "Timestamp": "2026-11-29T10:00:00.000Z",
    }
    return parse_envelope(json.dumps(body).encode())


def records(*keys, message_id="m-1"):
    return tuple(S3ObjectRecord(bucket="b", key=k, message_id=message_id) for k in keys)


# -- the implementations --------------------------------------------------------------------


class SQLiteFile:
    """The daemon's spool: SQLite in a file, operations grouped into commits on the reactor."""

    durable = True  # what it holds survives the process

    def __init__(self, tmp_path):
        self.path = str(tmp_path / "spool.sqlite3")

    def new(self, clock) -> Spool:
        """A spool on this backend's storage; a second one after a "crash" sees what the first committed."""
        return SQLiteSpool(reactor, self.path, clock=clock)

    def dead_letters(self, spool) -> list[tuple]:
        """``(message_id, key, reason, error, attempts, envelope's MessageId)`` of each dead letter, oldest first."""
        conn = sqlite3.connect(self.path)
        try:
            return _summary(list_dead_letters(conn))
        finally:
            conn.close()


class SQLiteInline(SQLiteFile):
    """The same file, each operation committed at once (how ``snsd-admin`` and the in-memory harness use it)."""

    def new(self, clock) -> Spool:
        return SQLiteSpool(None, self.path, clock=clock, inline=True)


class SQLiteMemory(SQLiteFile):
    """``--spool :memory:``: the same behaviour for as long as the process lives."""

    durable = False

    def __init__(self, tmp_path):
        self.path = ":memory:"

    def dead_letters(self, spool) -> list[tuple]:
        # An in-memory database is visible to its own connection only.
        return _summary(list_dead_letters(spool._conn))


def _summary(letters) -> list[tuple]:
    return [
        (d.message_id, d.record.key, d.reason, d.error, d.attempts, json.loads(d.envelope)["MessageId"])
        for d in letters
    ]


BACKENDS = {"sqlite-file": SQLiteFile, "sqlite-inline": SQLiteInline, "sqlite-memory": SQLiteMemory}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request, tmp_path):
    return BACKENDS[request.param](tmp_path)


@pytest.fixture
def clock():
    clock = Clock()
    clock.advance(START)
    return clock


@pytest.fixture
def spools(backend, clock):
    """Opens spools on ``backend`` and closes every one of them at the end, crashed or not."""
    opened = []

    async def open_spool():
        spool = backend.new(clock)
        recovery = await spool.open(dedup_ttl=TTL)
        opened.append(spool)
        return spool, recovery

    yield open_spool
    for spool in opened:
        spool.close()


def durable_only(backend):
    if not backend.durable:
        pytest.skip("nothing outlives this backend's process")


# -- the behaviour --------------------------------------------------------------------------


def test_each_implementation_is_a_spool(backend, clock):
    assert isinstance(backend.new(clock), Spool)


@pytest_twisted.ensureDeferred
async def test_added_records_are_claimed_in_order_and_leave_when_completed(spools):
    spool, recovery = await spools()
    assert (recovery.pending, recovery.recent_message_ids) == (0, ())
    ids = await spool.add(envelope(), records("a", "b", "c"))
    assert ids == sorted(ids) and len(set(ids)) == 3
    batch = await spool.claim(0, 2)
    assert [(s.id, s.record.key, s.attempts) for s in batch] == [(ids[0], "a", 1), (ids[1], "b", 1)]
    assert [s.record for s in await spool.claim(batch[-1].id, 10)] == list(records("c"))
    await spool.complete(ids[0])
    await spool.complete(*ids[1:])
    assert await spool.counts() == {"records": 0, "dead_letters": 0}
    assert await spool.claim(0, 10) == []


@pytest_twisted.ensureDeferred
async def test_claiming_removes_nothing_and_counts_each_attempt(spools):
    spool, _ = await spools()
    (record_id,) = await spool.add(envelope(), records("a"))
    await spool.claim(0, 1)
    (again,) = await spool.claim(0, 1)  # claimed again from the start: still there, a second attempt
    assert (again.id, again.attempts) == (record_id, 2)
    assert await spool.counts() == {"records": 1, "dead_letters": 0}


@pytest_twisted.ensureDeferred
async def test_a_dead_letter_keeps_its_message_reason_error_and_attempts(backend, spools):
    spool, _ = await spools()
    (failed,) = await spool.add(envelope("m-9"), records("x", message_id="m-9"))
    (kept,) = await spool.add(envelope("m-8"), records("y", message_id="m-8"))
    await spool.claim(0, 10)
    await spool.dead_letter(failed, "job_error", "NoSuchKey")
    assert await spool.add_dead_letters(envelope("m-10"), records("z", message_id="m-10"), "breaker_open") is True
    assert await spool.counts() == {"records": 1, "dead_letters": 2}
    assert [s.id for s in await spool.claim(0, 10)] == [kept]
    assert backend.dead_letters(spool) == [
        ("m-9", "x", "job_error", "NoSuchKey", 1, "m-9"),
        ("m-10", "z", "breaker_open", None, 0, "m-10"),
    ]


@pytest_twisted.ensureDeferred
async def test_dead_lettering_the_remaining_records_takes_those_past_the_cursor_only(backend, spools):
    spool, _ = await spools()
    first, second, third = await spool.add(envelope(), records("a", "b", "c"))
    moved = await spool.dead_letter_remaining(first, "drain_timeout")
    assert [(record_id, message_id, json.loads(record)["key"]) for record_id, message_id, record in moved] == [
        (second, "m-1", "b"),
        (third, "m-1", "c"),
    ]
    assert [s.id for s in await spool.claim(0, 10)] == [first]
    assert [(key, reason) for _, key, reason, *_ in backend.dead_letters(spool)] == [
        ("b", "drain_timeout"),
        ("c", "drain_timeout"),
    ]


@pytest_twisted.ensureDeferred
async def test_records_not_completed_run_again_after_a_crash(backend, spools, clock):
    durable_only(backend)
    spool, _ = await spools()
    done, running, waiting = await spool.add(envelope(), records("a", "b", "c"))
    await spool.claim(0, 2)
    await spool.complete(done)
    # The process dies here: the spool is never closed.
    restarted, recovery = await spools()
    assert recovery.pending == 2
    assert [message_id for message_id, _ in recovery.recent_message_ids] == ["m-1"]
    again = await restarted.claim(0, 10)
    assert [(s.id, s.record.key, s.attempts) for s in again] == [(running, "b", 2), (waiting, "c", 1)]


@pytest_twisted.ensureDeferred
async def test_dead_letters_and_remembered_ids_survive_a_restart(backend, spools):
    durable_only(backend)
    spool, _ = await spools()
    await spool.add_dead_letters(envelope("m-1"), records("a"), "breaker_open", "open")
    await spool.close()
    restarted, recovery = await spools()
    assert await restarted.counts() == {"records": 0, "dead_letters": 1}
    assert [message_id for message_id, _ in recovery.recent_message_ids] == ["m-1"]
    assert await restarted.add(envelope("m-1"), records("a")) is None


@pytest_twisted.ensureDeferred
async def test_a_redelivery_within_the_ttl_writes_nothing(spools):
    spool, _ = await spools()
    assert len(await spool.add(envelope("m-1"), records("a"))) == 1
    assert await spool.add(envelope("m-1"), records("a")) is None
    assert await spool.add_dead_letters(envelope("m-1"), records("a"), "breaker_open") is None
    assert await spool.counts() == {"records": 1, "dead_letters": 0}


@pytest_twisted.ensureDeferred
async def test_a_message_is_new_again_once_its_ttl_is_over(spools, clock):
    spool, _ = await spools()
    await spool.add(envelope("m-1"), records("a"))
    clock.advance(TTL - 1)
    assert await spool.add(envelope("m-1"), records("a")) is None
    clock.advance(2)  # past the TTL, whether or not anything was pruned
    assert len(await spool.add(envelope("m-1"), records("a"))) == 1
    assert await spool.add(envelope("m-1"), records("a")) is None
    assert await spool.counts() == {"records": 2, "dead_letters": 0}


@pytest_twisted.ensureDeferred
async def test_an_id_is_remembered_until_the_time_its_caller_gives(spools, clock):
    spool, _ = await spools()
    await spool.add(envelope("m-1"), records("a"), remember_until=START + 3 * TTL)
    await spool.add_dead_letters(envelope("m-2"), records("b"), "breaker_open", remember_until=START + 3 * TTL)
    clock.advance(3 * TTL - 1)  # long past the TTL, still before remember_until
    await spool.prune()
    assert await spool.add(envelope("m-1"), records("a")) is None
    assert await spool.add(envelope("m-2"), records("b")) is None
    clock.advance(2)
    assert len(await spool.add(envelope("m-1"), records("a"))) == 1
    assert len(await spool.add(envelope("m-2"), records("b"))) == 1


@pytest_twisted.ensureDeferred
async def test_a_forgotten_id_gets_in_again(spools):
    spool, _ = await spools()
    await spool.add(envelope("m-1"), records("a"))
    assert await spool.forget("m-1") is None  # its delivery was answered 5xx after all: SNS's retry must get in
    assert len(await spool.add(envelope("m-1"), records("a"))) == 1
    assert await spool.add(envelope("m-1"), records("a")) is None


@pytest_twisted.ensureDeferred
async def test_a_message_without_records_is_remembered(spools):
    spool, _ = await spools()
    assert await spool.add(envelope("m-1"), ()) == []
    assert await spool.add(envelope("m-1"), records("a")) is None


@pytest_twisted.ensureDeferred
async def test_pruning_forgets_the_ids_whose_time_is_over(backend, spools, clock):
    spool, _ = await spools()
    (done,) = await spool.add(envelope("done"), records("a", message_id="done"))
    (waiting,) = await spool.add(envelope("waiting"), records("b", message_id="waiting"))
    await spool.add(envelope("later"), (), remember_until=START + 2 * TTL)
    await spool.complete(done)
    clock.advance(TTL + 1)
    await spool.add(envelope("recent"), ())
    assert await spool.prune() == 2  # "done" and "waiting"
    assert await spool.prune() == 0
    # A record still owed a result keeps its message's envelope, for its dead letter.
    await spool.dead_letter(waiting, "job_error", "late")
    assert backend.dead_letters(spool) == [("waiting", "b", "job_error", "late", 0, "waiting")]
    if backend.durable:
        await spool.close()
        _, recovery = await spools()
        assert [message_id for message_id, _ in recovery.recent_message_ids] == ["later", "recent"]


@pytest_twisted.ensureDeferred
async def test_an_id_whose_time_is_over_is_forgotten_at_the_next_open(backend, spools, clock):
    durable_only(backend)
    spool, _ = await spools()
    await spool.add(envelope("old"), records("a", message_id="old"))
    await spool.add(envelope("young"), (), remember_until=START + 2 * TTL)
    await spool.close()
    clock.advance(TTL + 1)
    restarted, recovery = await spools()
    assert [message_id for message_id, _ in recovery.recent_message_ids] == ["young"]
    assert recovery.pending == 1
    assert await restarted.prune() == 0  # forgotten already, at the open


@pytest_twisted.ensureDeferred
async def test_a_spool_not_opened_yet_refuses_work(backend, clock):
    with pytest.raises(RuntimeError):
        await backend.new(clock).add(envelope(), records("a"))


@pytest_twisted.ensureDeferred
async def test_closing_twice_is_harmless_and_a_closed_spool_refuses_work(spools):
    spool, _ = await spools()
    await spool.add(envelope(), records("a"))
    await spool.close()
    await spool.close()
    with pytest.raises(RuntimeError, match="closed"):
        await spool.add(envelope("m-2"), records("b"))
