"""Spool files of earlier releases open with everything in them; a later release's file is refused untouched.

``fixtures/spool-v0.sqlite3`` was written by the release before schema versions (commit
1d34374) with ``fixtures/make_spool_v0.py`` (its docstring has the recipe); ``V0_CONTENT`` is
what that script put in it.  Each test works on a copy.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from snsd import spool_schema
from snsd.spool import SpoolVersionError, SQLiteSpool, list_dead_letters
from tests.fixtures.make_spool_v0 import TTL, WRITTEN_AT, envelope, records

FIXTURES = Path(__file__).parent / "fixtures"

V0_CONTENT = {
    # (key, attempts) of each record owed a result, oldest first
    "pending": [("a.csv", 1), ("b.csv", 0), ("f.csv", 0), ("c.csv", 0)],
    # (message_id, key, reason, error, attempts) of each dead letter
    "dead_letters": [
        ("failed-1", "bad.csv", "job_error", "NoSuchKey: gone", 1),
        ("skipped-1", "s1.csv", "breaker_open", None, 0),
        ("skipped-1", "s2.csv", "breaker_open", None, 0),
    ],
    # ids remembered at WRITTEN_AT ("expired-1" had expired, "forgotten-1" was forgotten)
    "remembered": ["done-1", "empty-1", "pending-1", "failed-1", "skipped-1", "pending-2"],
}


def fired(d):
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


@pytest.fixture
def v0_copy(tmp_path):
    path = tmp_path / "spool.sqlite3"
    shutil.copyfile(FIXTURES / "spool-v0.sqlite3", path)
    return str(path)


def opened(path, at=WRITTEN_AT + 10):
    clock = Clock()
    clock.advance(at)
    spool = SQLiteSpool(None, path, clock=clock, inline=True)
    return spool, fired(spool.open(dedup_ttl=TTL))


def test_the_fixture_is_an_unversioned_spool_of_the_old_layout(v0_copy):
    conn = sqlite3.connect(v0_copy)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (0,)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(messages)")]
        assert columns == ["message_id", "topic_arn", "envelope", "accepted_at"]
    finally:
        conn.close()


def test_a_spool_of_the_release_before_versions_opens_with_everything_in_it(v0_copy):
    spool, recovery = opened(v0_copy)
    assert sqlite3.connect(v0_copy).execute("PRAGMA user_version").fetchone() == (spool_schema.VERSION,)
    assert recovery.pending == len(V0_CONTENT["pending"])
    assert sorted(m for m, _ in recovery.recent_message_ids) == sorted(V0_CONTENT["remembered"])
    claimed = fired(spool.claim(0, 100))
    assert [(s.record.key, s.attempts - 1) for s in claimed] == V0_CONTENT["pending"]
    assert claimed[0].record == records("pending-1", "a.csv")[0]
    conn = sqlite3.connect(v0_copy)
    letters = list_dead_letters(conn)
    assert [(d.message_id, d.record.key, d.reason, d.error, d.attempts) for d in letters] == V0_CONTENT["dead_letters"]
    assert [json.loads(d.envelope)["MessageId"] for d in letters] == ["failed-1", "skipped-1", "skipped-1"]
    conn.close()

    # A pending record's envelope is still there: dead-lettered now, it takes it along.
    fired(spool.dead_letter(claimed[1].id, "job_error", "later"))
    conn = sqlite3.connect(v0_copy)
    (moved,) = list_dead_letters(conn, reason="job_error", ids=[4])
    assert json.loads(moved.envelope)["MessageId"] == "pending-1"
    conn.close()

    # Remembered ids still refuse their redelivery; forgotten and expired ones get in.
    for message_id in V0_CONTENT["remembered"]:
        assert fired(spool.add(envelope(message_id), records(message_id, "again.csv"))) is None, message_id
    for message_id in ("forgotten-1", "expired-1"):
        assert len(fired(spool.add(envelope(message_id), records(message_id, "again.csv")))) == 1, message_id
    fired(spool.close())


def test_the_old_spool_is_upgraded_to_the_lean_layout(v0_copy):
    spool, _ = opened(v0_copy)
    conn = sqlite3.connect(v0_copy)
    assert conn.execute("PRAGMA auto_vacuum").fetchone() == (spool_schema.INCREMENTAL,)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(messages)")]
    assert columns == ["message_id", "accepted_at", "remember_until"]  # no envelope, no topic
    # Pruning and recovery find the expired ids through an index, not by reading them all.
    plan = conn.execute("EXPLAIN QUERY PLAN SELECT message_id FROM messages WHERE remember_until < 0").fetchall()
    assert "messages_remember_until" in str(plan)
    assert conn.execute("SELECT COUNT(*) FROM messages WHERE remember_until != accepted_at + ?", (TTL,)).fetchone() == (
        0,
    )
    # One envelope per message with records owed a result, counting them; none for the others.
    kept = conn.execute(
        "SELECT r.message_id, e.pending, e.envelope FROM records r"
        " JOIN envelopes e ON e.id = r.envelope_id ORDER BY r.id"
    ).fetchall()
    assert [(m, pending, json.loads(text)["MessageId"]) for m, pending, text in kept] == [
        ("pending-1", 2, "pending-1"),
        ("pending-1", 2, "pending-1"),
        ("forgotten-1", 1, "forgotten-1"),
        ("pending-2", 1, "pending-2"),
    ]
    assert conn.execute("SELECT COUNT(*) FROM envelopes").fetchone() == (3,)
    # Finished, they take their envelopes with them.
    fired(spool.complete(*(s.id for s in fired(spool.claim(0, 100)))))
    assert conn.execute("SELECT COUNT(*) FROM envelopes").fetchone() == (0,)
    conn.close()
    fired(spool.close())


def test_an_upgrade_that_fails_part_way_leaves_the_file_at_the_last_version_it_reached(v0_copy, monkeypatch):
    def broken(conn, dedup_ttl):
        conn.execute("DROP TABLE messages")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(spool_schema, "UPGRADES", (spool_schema.UPGRADES[0], broken))
    with pytest.raises(sqlite3.OperationalError):
        opened(v0_copy)
    conn = sqlite3.connect(v0_copy)
    assert conn.execute("PRAGMA user_version").fetchone() == (1,)
    assert conn.execute("SELECT COUNT(*) FROM messages WHERE envelope IS NOT NULL").fetchone() == (8,)
    conn.close()
    monkeypatch.undo()
    spool, recovery = opened(v0_copy)  # the next start carries on
    assert recovery.pending == len(V0_CONTENT["pending"])
    assert sorted(m for m, _ in recovery.recent_message_ids) == sorted(V0_CONTENT["remembered"])
    fired(spool.close())


def test_an_upgrade_is_logged_once_and_a_new_file_is_not_an_upgrade(v0_copy, tmp_path):
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        for path in (v0_copy, v0_copy, str(tmp_path / "new.sqlite3")):
            spool, _ = opened(path)
            fired(spool.close())
    finally:
        globalLogPublisher.removeObserver(events.append)
    upgrades = [e for e in events if e.get("log_format", "").startswith("upgraded the spool")]
    assert [(e["path"], e["found"], e["version"]) for e in upgrades] == [(v0_copy, 0, spool_schema.VERSION)]


def test_an_upgraded_spool_opens_again_as_it_is(v0_copy):
    spool, first = opened(v0_copy)
    fired(spool.close())
    spool, again = opened(v0_copy)
    assert again == first
    fired(spool.close())


def test_a_new_spool_is_created_at_the_current_version(tmp_path):
    path = str(tmp_path / "new.sqlite3")
    spool, recovery = opened(path)
    assert (recovery.pending, recovery.recent_message_ids) == (0, ())
    fired(spool.close())
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (spool_schema.VERSION,)


def newer_spool(tmp_path) -> str:
    path = str(tmp_path / "newer.sqlite3")
    spool, _ = opened(path)
    fired(spool.add(envelope("m-1"), records("m-1", "a.csv")))
    fired(spool.close())
    conn = sqlite3.connect(path)
    # Out of WAL mode, as a later release might leave it: switching it back would rewrite the header.
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute(f"PRAGMA user_version = {spool_schema.VERSION + 1}")
    conn.close()
    return path


def test_a_spool_of_a_newer_release_is_refused_and_left_unchanged(tmp_path):
    path = newer_spool(tmp_path)
    before = Path(path).read_bytes()
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # an mtime a rewrite could not keep by chance
    spool = SQLiteSpool(None, path, clock=Clock(), inline=True)
    with pytest.raises(SpoolVersionError) as refused:
        spool.open()
    message = str(refused.value)
    assert "\n" not in message
    assert f"version {spool_schema.VERSION + 1}" in message
    assert Path(path).read_bytes() == before
    assert os.stat(path).st_mtime_ns == 1_000_000_000
    assert not os.path.exists(path + "-wal")


def test_snsd_admin_refuses_a_newer_spool_too(tmp_path, capsys):
    from snsd.admin import EXIT_USAGE, main

    path = newer_spool(tmp_path)
    before = Path(path).read_bytes()
    assert main(["--spool", path, "spool", "stats"]) == EXIT_USAGE
    assert f"cannot use the spool {path}: its layout is version {spool_schema.VERSION + 1}" in capsys.readouterr().err
    assert Path(path).read_bytes() == before


def test_a_file_a_newer_snsd_upgrades_while_this_one_opens_it_is_refused_too(tmp_path, monkeypatch):
    path = str(tmp_path / "raced.sqlite3")
    spool, _ = opened(path)
    fired(spool.close())
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    # The first look finds version 1; by the time the upgrade's transaction looks, a newer snsd
    # has taken the file to a version this code does not know.
    seen = iter([1, 1])
    monkeypatch.setattr(spool_schema, "version_of", lambda conn: next(seen, spool_schema.VERSION + 1))
    with pytest.raises(SpoolVersionError):
        opened(path)
