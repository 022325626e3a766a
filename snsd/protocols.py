"""The swappable parts of snsd, stated as protocols: the spool, the results sink and the job.

The dispatcher, the web layer and the daemon use these parts only through the methods below,
so another implementation (a spool on SQS, a sink writing elsewhere, a job in another process)
stands in for today's without changing them.  Structural typing (``typing.Protocol``) rather
than base classes: an implementation needs no import from here, and a test fake need not
inherit anything.  The value types a spool hands back are here too, because they are part of
the contract, not of one backend.

The behaviour every spool must have is specified once, in ``tests/test_spool_protocol.py``,
and run against each implementation through one fixture.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from twisted.internet.defer import Deferred

from snsd.envelope import SNSEnvelope
from snsd.records import S3ObjectRecord


@dataclass(frozen=True)
class SpooledRecord:
    """A record owed a result, as :meth:`Spool.claim` hands it out."""

    id: int
    record: S3ObjectRecord
    attempts: int = 0


@dataclass(frozen=True)
class Recovery:
    """What opening a spool found: records owed a result and the MessageIds still remembered.

    ``recent_message_ids`` pairs each id with the time it was accepted."""

    pending: int
    recent_message_ids: tuple[tuple[str, float], ...]


@runtime_checkable
class Spool(Protocol):
    """The durable queue between an accepted message and its results.

    Every operation returns a Deferred and may be queued with others into one commit; a
    Deferred fires only once its operation is durable.  Records are claimed in id order and
    stay in the spool (running again after a crash) until completed or dead-lettered.
    """

    path: str
    in_memory: bool  # nothing survives the process: a drain must account for every record

    def open(self, dedup_ttl: float = 3600.0) -> Deferred[Recovery]:
        """Open the storage; ``dedup_ttl`` is how long an accepted MessageId is remembered by default."""

    def close(self) -> Deferred[None]:
        """Make every queued operation durable, then close; closing twice does nothing."""

    def add(
        self, envelope: SNSEnvelope, records: tuple[S3ObjectRecord, ...], remember_until: float | None = None
    ) -> Deferred[list[int] | None]:
        """Accept a message and its records atomically; fire with the records' ids, or with None
        if the MessageId is still remembered (a redelivery: nothing is written).

        The id is remembered until ``remember_until`` (epoch seconds; by default the time of
        acceptance plus ``dedup_ttl``)."""

    def add_dead_letters(
        self,
        envelope: SNSEnvelope,
        records: tuple[S3ObjectRecord, ...],
        reason: str,
        error: str | None = None,
        remember_until: float | None = None,
    ) -> Deferred[bool | None]:
        """Accept a message straight into the dead letters; True, or None for a redelivery (as :meth:`add`)."""

    def forget(self, message_id: str) -> Deferred[None]:
        """Stop remembering ``message_id``, so SNS's retry of a delivery answered 5xx gets in."""

    def claim(self, after_id: int, limit: int) -> Deferred[list[SpooledRecord]]:
        """The next ``limit`` records with id > ``after_id``, oldest first, each counting one more attempt."""

    def complete(self, *record_ids: int, lazy: bool = False) -> Deferred[None]:
        """The records have their results and leave the spool; ``lazy`` may delay the commit a little."""

    def dead_letter(self, record_id: int, reason: str, error: str | None) -> Deferred[None]:
        """Move a record to the dead letters, with its message's envelope."""

    def dead_letter_remaining(self, after_id: int, reason: str) -> Deferred[list[tuple[int, str, str]]]:
        """Dead-letter every record with id > ``after_id``; fire with ``(id, message_id, record JSON)`` of each."""

    def prune(self) -> Deferred[int]:
        """Forget the MessageIds whose ``remember_until`` has passed; fire with how many were forgotten."""

    def counts(self) -> Deferred[dict[str, int]]:
        """``{"records": records owed a result, "dead_letters": dead letters kept}``."""


@runtime_checkable
class Sink(Protocol):
    """Where result lines go; called from worker threads, so implementations are thread-safe."""

    def write(self, line: dict) -> None:
        """Record one result; raise if it is not recorded."""

    def write_many(self, lines: Sequence[dict]) -> None:
        """Record a batch of results; raise if any may not be recorded (the caller then writes
        them one by one, so a result recorded twice is possible: results are at least once)."""

    def close(self) -> None:
        """Release the sink's resources; no write follows."""

    def describe(self) -> str:
        """Where the results go, for logs and messages."""


@runtime_checkable
class Job(Protocol):
    """The work run for each S3 object: returns a JSON-serialisable result, or raises.

    Called from worker threads.  A job that holds resources (processes, connections) may also
    have ``close()``; a plain function is a job too."""

    def __call__(self, record: S3ObjectRecord) -> dict: ...
