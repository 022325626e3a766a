"""The SQLite spool's layout, its version, and the ordered steps that bring an older file up to it.

The file's version is ``PRAGMA user_version``: 0 for a new file and for files written before
versions existed (their tables are version 1's, so the first step creates them only if they are
missing), ``len(UPGRADES)`` once current.  Each step runs in its own transaction together with
the version it reaches, so a crash mid-upgrade leaves the file at the last version it fully
reached, and the next start carries on from there.

A file of a newer version than this code knows was written by a later release, whose layout
this one cannot read or write safely: it is refused before anything writes to it.

Adding a step: append a function to ``UPGRADES`` (never edit a released one), and open an
old file in a test (``tests/test_spool_versions.py`` has the file of each release).

Version 2, the lean layout: a remembered MessageId costs its id and two times; a message's
envelope is kept (in ``envelopes``) only while one of its records is owed a result, since a
dead letter keeps its own copy.  Before it, every accepted envelope (about 2 KB) stayed for the
whole dedup TTL.  The file also gives freed pages back (``auto_vacuum=INCREMENTAL``; the spool
runs ``PRAGMA incremental_vacuum`` as it prunes), so it shrinks again after a burst.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable


class SpoolVersionError(Exception):
    """The spool file was written by a newer snsd; it is left as it is."""


# Version 1: the layout of the releases before versions (commit 1d34374 and earlier).
_V1 = (
    """CREATE TABLE IF NOT EXISTS messages (
        message_id TEXT PRIMARY KEY,
        topic_arn TEXT NOT NULL,
        envelope TEXT NOT NULL,
        accepted_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS messages_accepted_at ON messages (accepted_at)",
    """CREATE TABLE IF NOT EXISTS records (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id TEXT NOT NULL,
        record TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        enqueued_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id TEXT,
        record TEXT NOT NULL,
        envelope TEXT,
        reason TEXT NOT NULL,
        error TEXT,
        failed_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 1
    )""",
)


def _to_v1(conn: sqlite3.Connection, dedup_ttl: float) -> None:
    for statement in _V1:
        conn.execute(statement)


def _to_v2(conn: sqlite3.Connection, dedup_ttl: float) -> None:
    """The lean layout: ``messages`` keeps ids and times only; a message's envelope lives in
    ``envelopes`` while records of it are in ``records``."""
    # Keyed by an integer that each record carries: a record's envelope is one rowid lookup away,
    # with no index to maintain on the hot path.  ``pending``: its records still in ``records``.
    conn.execute("CREATE TABLE envelopes (id INTEGER PRIMARY KEY, envelope TEXT NOT NULL, pending INTEGER NOT NULL)")
    conn.execute("ALTER TABLE records ADD COLUMN envelope_id INTEGER")
    # Each pending message's envelope, numbered by its first record's id (unique, and below any
    # id SQLite picks later).
    conn.execute(
        "INSERT INTO envelopes (id, envelope, pending)"
        " SELECT MIN(r.id), m.envelope, COUNT(*) FROM messages m JOIN records r ON r.message_id = m.message_id"
        " GROUP BY m.message_id"
    )
    conn.execute(
        "UPDATE records SET envelope_id = (SELECT MIN(first.id) FROM records first"
        " WHERE first.message_id = records.message_id)"
        " WHERE message_id IN (SELECT message_id FROM messages)"
    )
    # WITHOUT ROWID: the id is the key, stored once (a rowid table would add a copy in its index).
    conn.execute(
        """CREATE TABLE remembered (
            message_id TEXT PRIMARY KEY,
            accepted_at REAL NOT NULL,
            remember_until REAL NOT NULL  -- a redelivery before this time is a duplicate
        ) WITHOUT ROWID"""
    )
    # Version 1 remembered an id for the TTL after acceptance (a forgotten one had accepted_at 0).
    conn.execute(
        "INSERT INTO remembered (message_id, accepted_at, remember_until)"
        " SELECT message_id, accepted_at, accepted_at + ? FROM messages",
        (dedup_ttl,),
    )
    conn.execute("DROP TABLE messages")
    conn.execute("ALTER TABLE remembered RENAME TO messages")
    conn.execute("CREATE INDEX messages_remember_until ON messages (remember_until)")
    # Whatever takes a record out of ``records`` (completion, dead letter, drain), its envelope
    # goes with the message's last record: no code path can leave one behind.
    conn.execute(
        """CREATE TRIGGER record_gone AFTER DELETE ON records WHEN OLD.envelope_id IS NOT NULL BEGIN
            DELETE FROM envelopes WHERE id = OLD.envelope_id AND pending = 1;
            UPDATE envelopes SET pending = pending - 1 WHERE id = OLD.envelope_id;
        END"""
    )


# UPGRADES[n] takes a file from version n to version n + 1; ``dedup_ttl`` is the daemon's.
UPGRADES: tuple[Callable[[sqlite3.Connection, float], None], ...] = (_to_v1, _to_v2)
VERSION = len(UPGRADES)
# PRAGMA auto_vacuum's value for INCREMENTAL.
INCREMENTAL = 2


def version_of(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    return version


def refuse_newer(conn: sqlite3.Connection) -> None:
    """Raise :class:`SpoolVersionError` if the file is of a version this code does not know.

    Reads only: call it before anything (even ``journal_mode=WAL``) writes to the file."""
    version = version_of(conn)
    if version > VERSION:
        raise SpoolVersionError(
            f"its layout is version {version}, from a newer snsd (this one knows up to {VERSION});"
            " run that snsd or give another --spool. The file was not changed."
        )


def upgrade(conn: sqlite3.Connection, dedup_ttl: float) -> int:
    """Bring the file up to :data:`VERSION`, one step per transaction; return the version it had."""
    found = version_of(conn)
    for version in range(found, VERSION):
        # A step that fails leaves its transaction open: the caller closes the connection, and
        # with it SQLite rolls the step back.
        conn.execute("BEGIN IMMEDIATE")
        # Read again inside the transaction: another process may have upgraded meanwhile.
        if version_of(conn) == version:
            UPGRADES[version](conn, dedup_ttl)
            conn.execute(f"PRAGMA user_version = {version + 1}")
        conn.execute("COMMIT")
    refuse_newer(conn)  # a newer snsd may have written the file since the first look
    if conn.execute("PRAGMA auto_vacuum").fetchone() != (INCREMENTAL,):
        # Part of the upgrade to version 2, for new files too (on a new file it takes no time).
        # Outside the step's transaction because VACUUM cannot run in one; checked at every
        # open, so a crash before it finished only means it runs at the next start.  Rewrites the
        # file once: a few seconds per GB, before the daemon takes work.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")
    return found
