"""The durable spool: accepted records live here until their result or dead letter is written.

One SQLite database (WAL mode; its layout and versions are in :mod:`snsd.spool_schema`) holds:

- ``messages``: each accepted MessageId, when it was accepted and until when a redelivery of
  it is a duplicate (duplicate detection across restarts);
- ``records``: one row per S3 object still owed a result;
- ``envelopes``: the SNS envelope of each message with records in ``records``, for their
  dead letters; it leaves with its message's last record;
- ``dead_letters``: records whose job failed, that the breaker skipped, or that a drain
  could not start, with the original envelope.

Operations run on the reactor thread in group commits: every operation asked for during one
reactor turn joins one transaction, committed at the start of the next turn, before any of
their Deferreds fire.  A burst of N messages costs a handful of commits, not N.

Why not a writer thread: with ``synchronous=NORMAL`` in WAL mode a commit is a write to the
page cache, no fsync, and costs less (tens of microseconds) than handing each operation to
another thread and back under the GIL (measured in docs/performance.md).  The one step that
does fsync, the WAL checkpoint, is taken off the reactor: automatic checkpoints are off and a
thread checkpoints from its own connection every ``CHECKPOINT_EVERY`` operations; when the WAL
has grown past ``WAL_RESET_BYTES`` anyway, commits pause while the thread resets it.

:class:`SQLiteSpool` is one implementation of :class:`snsd.protocols.Spool`, the interface the
dispatcher and the daemon use, so another backend (SQS, say) can stand in for it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Generator
from dataclasses import dataclass

from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from snsd import spool_schema as schema
from snsd.envelope import SNSEnvelope
from snsd.logs import Logger
from snsd.protocols import Recovery, SpooledRecord
from snsd.records import S3ObjectRecord
from snsd.spool_schema import SpoolVersionError  # noqa: F401 - what open() raises for a newer file

log = Logger()

# The cap bounds how long one commit keeps the reactor from answering.
MAX_BATCH = 512
# How long a completion may wait for company: nobody waits on it, and a later operation's
# transaction (or this timer) takes it along.  A crash inside the window reruns the job, as any
# crash between a result and its completion does.
LAZY_DELAY = 0.05
# Operations between WAL checkpoints (each a few pages of WAL; SQLite's own default is 1000 pages).
CHECKPOINT_EVERY = 1000
# Ids a prune forgets, and free pages it gives back, per operation: each slice is one statement
# on the reactor, so these bound how long one holds up the answers (docs/performance.md).
PRUNE_SLICE = 5000
VACUUM_SLICE = 2048
# Free pages a prune leaves in the file (4 MB at SQLite's 4 KB pages), for the inserts to come.
FREE_PAGES_KEPT = 1024
# A WAL larger than this after a checkpoint is reset (see SQLiteSpool._reset_wal_if_big); the
# reset may wait this long (seconds) for a reader, while commits wait for it.
WAL_RESET_BYTES = 16 * 1024 * 1024
WAL_RESET_WAIT = 0.2


@dataclass(frozen=True)
class DeadLetter:
    id: int
    message_id: str | None
    record: S3ObjectRecord
    envelope: str | None
    reason: str
    error: str | None
    failed_at: float
    attempts: int


def connect(path: str, *, autocheckpoint: bool, dedup_ttl: float) -> sqlite3.Connection:
    """Open the spool at ``path``, upgraded to this code's layout.

    Raises :class:`SpoolVersionError`, having written nothing, for a file of a newer release.
    ``dedup_ttl`` dates the remembered ids of a file from before ``remember_until`` existed."""
    # Used on the reactor thread only (the checkpoint thread has a connection of its own).
    # timeout: how long a commit waits for a lock another process (snsd-admin) holds.
    conn = sqlite3.connect(path, isolation_level=None, timeout=5.0)
    try:
        # Before anything writes, even the journal mode in the file's header.
        schema.refuse_newer(conn)
        if path != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")
            if not autocheckpoint:
                conn.execute("PRAGMA wal_autocheckpoint=0")
        # NORMAL in WAL mode survives a process crash (what SIGKILL and OOM do); only an OS crash
        # or power loss can lose the last transactions.
        conn.execute("PRAGMA synchronous=NORMAL")
        fresh = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone() == (0,)
        found = schema.upgrade(conn, dedup_ttl)
    except BaseException:
        conn.close()
        raise
    if not fresh and found < schema.VERSION:
        log.info(
            "upgraded the spool {path} from version {found} to {version}",
            path=path,
            found=found,
            version=schema.VERSION,
        )
    return conn


def _accept_message(conn: sqlite3.Connection, message: tuple[str, float, float], now: float) -> bool:
    """Remember ``(message_id, accepted_at, remember_until)``; False if that id is remembered
    already (a redelivery: the caller writes nothing)."""
    # One statement: a new id is inserted; a known one whose time is over (not pruned yet) is
    # new again and takes the new times; a known one still remembered changes nothing.
    return conn.execute(
        "INSERT INTO messages (message_id, accepted_at, remember_until) VALUES (?, ?, ?)"
        " ON CONFLICT (message_id) DO UPDATE SET accepted_at = excluded.accepted_at,"
        " remember_until = excluded.remember_until WHERE messages.remember_until < ?",
        (*message, now),
    ).rowcount


class SQLiteSpool:
    def __init__(self, reactor, path: str, clock=None, inline: bool = False):
        """``inline=True`` runs each operation at once, committing each, and returns fired
        Deferreds: for synchronous tests and the admin command, never for the daemon."""
        self._reactor = reactor
        self._inline = inline
        self._clock = clock or reactor
        self.path = path
        self.in_memory = path == ":memory:"
        self._conn: sqlite3.Connection | None = None
        self._queued: list = []
        self._flush_call = None
        self._since_checkpoint = 0
        self._checkpointing = False
        self._paused = False  # commits wait while the WAL is reset
        self.wal_resets = 0  # for tests and benchmarks
        self.vacuums = 0  # for tests: slices of free pages given back
        self.last_checkpoint: Deferred | None = None  # for tests: fires with (busy, wal frames, copied)
        self.commits = 0  # for tests and benchmarks: how many transactions ran
        self._dedup_ttl = 3600.0  # set by open()

    # -- lifecycle -------------------------------------------------------------------------

    def open(self, dedup_ttl: float = 3600.0) -> Deferred:
        """Open the database; fires with a :class:`Recovery`.

        ``dedup_ttl``: how long an accepted MessageId keeps :meth:`add` from accepting it again.
        """
        self._dedup_ttl = dedup_ttl
        self._conn = connect(self.path, autocheckpoint=self._inline or self.in_memory, dedup_ttl=dedup_ttl)
        return self._submit(self._recover_at(self._clock.seconds()))

    @staticmethod
    def _recover_at(now: float):
        def recover(conn):
            (pending,) = conn.execute("SELECT COUNT(*) FROM records").fetchone()
            # In the order they stop being remembered (the index's): about the order of acceptance.
            recent = conn.execute(
                "SELECT message_id, accepted_at FROM messages WHERE remember_until >= ? ORDER BY remember_until",
                (now,),
            ).fetchall()
            conn.execute("DELETE FROM messages WHERE remember_until < ?", (now,))
            return Recovery(pending=pending, recent_message_ids=tuple(recent))

        return recover

    def close(self) -> Deferred:
        """Commit what is queued and close the database."""
        if self._conn is None:
            return succeed(None)
        while self._queued:  # a flush takes at most MAX_BATCH operations; it cancels a scheduled one
            self._flush(force=True)
        self._conn.close()
        self._conn = None
        return succeed(None)

    # -- the interface ---------------------------------------------------------------------

    def add(
        self, envelope: SNSEnvelope, records: tuple[S3ObjectRecord, ...], remember_until: float | None = None
    ) -> Deferred:
        """Record an accepted message and its records atomically; fires with their ids, or with
        None if the message's id is still remembered (nothing is written).  The id is remembered
        until ``remember_until``, by default for the dedup TTL."""
        now = self._clock.seconds()
        message = self._remembered(envelope, now, remember_until)
        rows = [(envelope.message_id, r.to_json(), now) for r in records]
        # Kept while any of the records is owed a result, for its dead letter if it gets one.
        kept = (envelope.raw.decode("utf-8", "replace"), len(rows))

        def add(conn):
            if not _accept_message(conn, message, now):
                return None
            if not rows:
                return []
            envelope_id = conn.execute("INSERT INTO envelopes (envelope, pending) VALUES (?, ?)", kept).lastrowid
            ids = []
            for row in rows:
                cursor = conn.execute(
                    "INSERT INTO records (message_id, record, enqueued_at, envelope_id) VALUES (?, ?, ?, ?)",
                    (*row, envelope_id),
                )
                ids.append(cursor.lastrowid)
            return ids

        return self._submit(add)

    def _remembered(self, envelope: SNSEnvelope, now: float, remember_until: float | None) -> tuple[str, float, float]:
        """The ``messages`` row of a message accepted ``now``."""
        return (envelope.message_id, now, now + self._dedup_ttl if remember_until is None else remember_until)

    def forget(self, message_id: str) -> Deferred:
        """Let a redelivery of ``message_id`` in again: its delivery was answered 5xx after all
        (``--ack after-job``), so SNS will retry it, and the retry must not read as a duplicate."""
        return self._submit(
            lambda conn: conn.execute("DELETE FROM messages WHERE message_id = ?", (message_id,)) and None
        )

    def add_dead_letters(
        self,
        envelope: SNSEnvelope,
        records: tuple[S3ObjectRecord, ...],
        reason: str,
        error: str | None = None,
        remember_until: float | None = None,
    ) -> Deferred:
        """Accept a message straight into the dead letters (the breaker's ``skip`` mode); fires with
        True, or with None if the message's id is still remembered (as :meth:`add`)."""
        now = self._clock.seconds()
        message = self._remembered(envelope, now, remember_until)
        envelope_text = envelope.raw.decode("utf-8", "replace")

        def add(conn):
            if not _accept_message(conn, message, now):
                return None
            conn.executemany(
                "INSERT INTO dead_letters (message_id, record, envelope, reason, error, failed_at, attempts)"
                " VALUES (?, ?, ?, ?, ?, ?, 0)",
                [(envelope.message_id, r.to_json(), envelope_text, reason, error, now) for r in records],
            )
            return True

        return self._submit(add)

    def claim(self, after_id: int, limit: int) -> Deferred:
        """The next ``limit`` records with id > ``after_id``, oldest first, each counting one more attempt.

        Claiming deletes nothing: a record stays in ``records`` until it is completed or
        dead-lettered, so after a crash every record still there runs again.
        """

        def claim(conn):
            rows = conn.execute(
                "UPDATE records SET attempts = attempts + 1 WHERE id IN "
                "(SELECT id FROM records WHERE id > ? ORDER BY id LIMIT ?) RETURNING id, record, attempts",
                (after_id, limit),
            ).fetchall()
            rows.sort()
            return [SpooledRecord(id=i, record=S3ObjectRecord.from_json(r), attempts=a) for i, r, a in rows]

        return self._submit(claim)

    def complete(self, *record_ids: int, lazy: bool = False) -> Deferred:
        """The records have their results: they leave the spool.  ``lazy`` lets the commit wait up
        to ``LAZY_DELAY`` for other operations, saving a transaction per record at low load."""
        rows = [(record_id,) for record_id in record_ids]
        return self._submit(lambda conn: conn.executemany("DELETE FROM records WHERE id = ?", rows) and None, lazy)

    def dead_letter(self, record_id: int, reason: str, error: str | None) -> Deferred:
        """Move a record to the dead letters, with its message's envelope."""
        now = self._clock.seconds()

        def move(conn):
            conn.execute(
                "INSERT INTO dead_letters (message_id, record, envelope, reason, error, failed_at, attempts)"
                " SELECT r.message_id, r.record, e.envelope, ?, ?, ?, r.attempts FROM records r"
                " LEFT JOIN envelopes e ON e.id = r.envelope_id WHERE r.id = ?",
                (reason, error, now, record_id),
            )
            conn.execute("DELETE FROM records WHERE id = ?", (record_id,))

        return self._submit(move)

    def dead_letter_remaining(self, after_id: int, reason: str) -> Deferred:
        """Dead-letter every record not yet claimed (drain of an in-memory spool)."""
        now = self._clock.seconds()

        def move(conn):
            moved = conn.execute(
                "SELECT r.id, r.message_id, r.record FROM records r WHERE r.id > ? ORDER BY r.id", (after_id,)
            ).fetchall()
            conn.execute(
                "INSERT INTO dead_letters (message_id, record, envelope, reason, error, failed_at, attempts)"
                " SELECT r.message_id, r.record, e.envelope, ?, NULL, ?, r.attempts FROM records r"
                " LEFT JOIN envelopes e ON e.id = r.envelope_id WHERE r.id > ?",
                (reason, now, after_id),
            )
            conn.execute("DELETE FROM records WHERE id > ?", (after_id,))
            return moved

        return self._submit(move)

    @inlineCallbacks
    def prune(self) -> Generator[Deferred, object, int]:
        """Forget the ids whose time to be remembered is over, and give the freed space back.

        Fires with the number of ids forgotten.  In slices, each its own operation: at a high
        rate a prune meets hundreds of thousands of ids, and one statement for all of them would
        hold the reactor (and every answer) for a second.
        """
        now = self._clock.seconds()

        def forget_some(conn):
            return conn.execute(
                "DELETE FROM messages WHERE message_id IN"
                " (SELECT message_id FROM messages WHERE remember_until < ? LIMIT ?)",
                (now, PRUNE_SLICE),
            ).rowcount

        forgotten = 0
        while True:
            some = yield self._submit(forget_some)
            forgotten += some
            if some < PRUNE_SLICE:
                break
        while self._give_back():
            yield self._next_turn()  # let the answers waiting meanwhile go out
        return forgotten

    def _give_back(self) -> bool:
        """Give up to ``VACUUM_SLICE`` free pages back to the file system, keeping
        ``FREE_PAGES_KEPT`` for the inserts to come; True if there may be more to give back."""
        conn = self._conn
        # Closed meanwhile; or a WAL reset holds the write lock, and the vacuum would wait for it
        # on the reactor.  (Between group commits, as prune calls it, no transaction is open.)
        if conn is None or self._paused:
            return False
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        pages = min(free - FREE_PAGES_KEPT, VACUUM_SLICE)
        if pages <= 0:  # and never incremental_vacuum(0): that would free every page
            return False
        # Its own transaction, between group commits.  Not execute(): it steps a statement once,
        # and each step of this pragma frees one page; executescript steps it to the end.
        conn.executescript(f"PRAGMA incremental_vacuum({pages})")
        self.vacuums += 1
        return pages == VACUUM_SLICE

    def _next_turn(self) -> Deferred:
        if self._inline:
            return succeed(None)
        d = Deferred()
        self._reactor.callLater(0, d.callback, None)
        return d

    def counts(self) -> Deferred:
        def counts(conn):
            (records,) = conn.execute("SELECT COUNT(*) FROM records").fetchone()
            (dead,) = conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()
            return {"records": records, "dead_letters": dead}

        return self._submit(counts)

    # -- group commit ----------------------------------------------------------------------

    def _submit(self, operation, lazy: bool = False) -> Deferred:
        if self._conn is None:
            return fail(RuntimeError("the spool is not open (or closed already)"))
        if self._inline:
            self._queued.append((operation, Deferred()))
            return self._flush()[0]
        d = Deferred()
        self._queued.append((operation, d))
        # Not now: the rest of this reactor turn's requests join the same transaction.
        delay = LAZY_DELAY if lazy else 0
        if self._flush_call is None:
            self._flush_call = self._reactor.callLater(delay, self._flush)
        elif not lazy and self._flush_call.getTime() > self._reactor.seconds():
            self._flush_call.reset(0)  # a lazy flush was waiting: this operation cannot
        return d

    def _flush(self, force: bool = False) -> list[Deferred]:
        """Run the queued operations in one transaction; fire their Deferreds once it commits.

        Not while the WAL is being reset, unless ``force``d: the reset's end flushes what waits."""
        if self._paused and not force:
            return []
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()  # called directly (close): the scheduled flush would find nothing
        self._flush_call = None
        batch, self._queued = self._queued[:MAX_BATCH], self._queued[MAX_BATCH:]
        if self._queued:
            self._flush_call = self._reactor.callLater(0, self._flush)
        try:
            outcomes = self._transaction(batch)
        except Exception:
            # BEGIN or COMMIT failed (a disk error, another process holding the lock past the
            # busy timeout): every operation in the batch fails, none half-done.
            failed = Failure()
            outcomes = [(d, failed) for _, d in batch]
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        self._since_checkpoint += len(batch)
        if self._since_checkpoint >= CHECKPOINT_EVERY and not (self._inline or self.in_memory):
            self._checkpoint()
        for d, outcome in outcomes:
            _fire(d, outcome)
        return [d for d, _ in outcomes]

    def _transaction(self, batch: list) -> list:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            # The common case: every operation succeeds, and per-operation savepoints would
            # only double the statements.
            outcomes = [(d, operation(conn)) for operation, d in batch]
        except Exception:
            # One failed: start again with each operation in its own savepoint, so it fails alone.
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            outcomes = []
            for operation, d in batch:
                conn.execute("SAVEPOINT op")
                try:
                    outcomes.append((d, operation(conn)))
                    conn.execute("RELEASE op")
                except Exception:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((d, Failure()))
        conn.execute("COMMIT")
        self.commits += 1
        return outcomes

    def _checkpoint(self) -> None:
        """Copy the WAL into the database in a thread: the fsyncs happen there, not on the reactor."""
        if self._checkpointing:
            return
        self._checkpointing = True
        self._since_checkpoint = 0

        def done(result):
            self._checkpointing = False
            return result

        d = self._in_thread(_wal_checkpoint, self.path, "PASSIVE", 5.0)
        d.addCallback(self._reset_wal_if_big)
        d.addBoth(done).addErrback(lambda f: log.failure("spool checkpoint failed", f))
        self.last_checkpoint = d

    def _reset_wal_if_big(self, passive: tuple) -> Deferred | tuple:
        """Start the WAL again from its beginning once it has grown past ``WAL_RESET_BYTES``.

        SQLite rewinds the WAL only when a write begins after a checkpoint that copied all of it;
        under steady load a commit always lands while the passive checkpoint runs, so the WAL
        never rewinds and grows by every page every commit writes (about 25 KB a message at 100
        messages/s).  Here commits pause, on the reactor, without blocking it (operations queue
        up and join the next group commit), while a thread copies what the passive checkpoint
        left (the frames written meanwhile: few) and truncates the WAL.
        """
        # The -wal file exists as long as the spool's connection is open.
        if self._conn is None or os.path.getsize(self.path + "-wal") <= WAL_RESET_BYTES:
            return passive
        self._paused = True

        def resume(result):
            self._paused = False
            if self._queued and self._conn is not None:
                self._flush()  # what waited commits now (between group commits: none is open)
            if isinstance(result, Failure):
                log.failure("resetting the spool's WAL failed", result)
            elif result[0] == 0:  # not busy: done
                self.wal_resets += 1
            return passive

        # A reader (snsd-admin) can keep it waiting: not for long, the commits are paused.
        return self._in_thread(_wal_checkpoint, self.path, "TRUNCATE", WAL_RESET_WAIT).addBoth(resume)

    def _in_thread(self, f, *args) -> Deferred:
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), f, *args)


def _wal_checkpoint(path: str, mode: str, wait: float) -> tuple[int, int, int]:
    """``PRAGMA wal_checkpoint(mode)`` from a connection of its own: (busy, WAL frames, copied)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=wait)
    try:
        return conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
    finally:
        conn.close()


def _fire(d: Deferred, outcome) -> None:
    if isinstance(outcome, Failure):
        d.errback(outcome)
    else:
        d.callback(outcome)


# -- synchronous access for the admin command (never used inside the daemon) ---------------


def list_dead_letters(
    conn: sqlite3.Connection, limit: int | None = None, reason: str | None = None, ids: list[int] | None = None
) -> list[DeadLetter]:
    sql = "SELECT id, message_id, record, envelope, reason, error, failed_at, attempts FROM dead_letters"
    where, params = [], []
    if reason is not None:
        where.append("reason = ?")
        params.append(reason)
    if ids:
        where.append(f"id IN ({', '.join('?' * len(ids))})")
        params.extend(ids)
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(int(limit))
    return [
        DeadLetter(i, m, S3ObjectRecord.from_json(r), e, reason, err, t, a)
        for i, m, r, e, reason, err, t, a in conn.execute(sql, params)
    ]


def resolve_dead_letter(conn: sqlite3.Connection, dead_letter_id: int) -> None:
    """A replay succeeded: the dead letter has its result now."""
    with conn:
        conn.execute("DELETE FROM dead_letters WHERE id = ?", (dead_letter_id,))


def fail_dead_letter_again(conn: sqlite3.Connection, dead_letter_id: int, error: str | None, now: float) -> None:
    """A replay failed again: keep it, with one more attempt, the new error and time."""
    with conn:
        conn.execute(
            "UPDATE dead_letters SET attempts = attempts + 1, error = ?, failed_at = ? WHERE id = ?",
            (error, now, dead_letter_id),
        )
