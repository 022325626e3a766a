"""The SQLite spool's layout, its version, and the ordered steps that bring an older file up to it.

The file's version is ``PRAGMA user_version``: 0 for a new file and for files written before
versions existed (their tables are version 1's, so the first step creates them only if they are
missing), ``len(UPGRADES)`` once current.  Each step runs in its own transaction together with
the version it reaches, so a crash mid-upgrade leaves the file at the last version it fully
reached, and the next start carries on from there.

A file of a newer version than this code knows was written by a later release, whose layout
this one cannot read or write safely: it is refused before anything writes to it.

Adding a step: append a tuple of statements to ``UPGRADES`` (never edit a released one), and
open an old file in a test (``tests/test_spool_versions.py`` has the file of each release).
"""

from __future__ import annotations

import sqlite3


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

# UPGRADES[n] takes a file from version n to version n + 1.
UPGRADES: tuple[tuple[str, ...], ...] = (_V1,)
VERSION = len(UPGRADES)


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


def upgrade(conn: sqlite3.Connection) -> int:
    """Bring the file up to :data:`VERSION`, one step per transaction; return the version it had."""
    found = version_of(conn)
    for version in range(found, VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read again inside the transaction: another process may have upgraded meanwhile.
            if version_of(conn) == version:
                for statement in UPGRADES[version]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    refuse_newer(conn)  # a newer snsd may have written the file since the first look
    return found
