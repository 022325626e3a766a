"""Recently seen MessageIds, so SNS's at-least-once redeliveries run one job, not several.

:class:`AcceptedIds` is the one owner of "already accepted": the bounded memory below in front
of the ids the spool persists with each accepted message.  Admission asks it and nothing else.

An id is *reserved* the moment a delivery starts being handled, not when it finishes, so two
concurrent deliveries of the same message cannot both pass; a delivery refused with 5xx
*releases* its id so the SNS retry is accepted.  Entries expire ``ttl`` seconds after they were
reserved (time from the injected clock), and at most ``max_entries`` are kept: beyond that the
oldest are forgotten first, and the spool's ``messages`` table, which keeps every accepted id for
the TTL, refuses the redelivery instead (``SQLiteSpool.add``).  Every call is O(1) amortised
(an ``OrderedDict`` in insertion order; expired entries are dropped from the old end as they are
met).
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime

from snsd.envelope import SNSEnvelope
from snsd.logs import Logger
from snsd.trust.verifier import MAX_FUTURE_SKEW, parse_timestamp

log = Logger()


class DedupCache:
    def __init__(self, clock: IReactorTime, ttl: float = 3600.0, max_entries: int = 100_000) -> None:
        if ttl <= 0 or max_entries <= 0:
            raise ValueError("ttl and max_entries must be positive")
        self.clock = clock
        self.ttl = ttl
        self.max_entries = max_entries
        # message_id -> time it was reserved (or accepted, for preloaded ids)
        self._seen: OrderedDict[str, float] = OrderedDict()

    def _expired(self, seen_at: float, now: float) -> bool:
        return now - seen_at >= self.ttl

    def _purge(self, now: float) -> None:
        # Stops at the first live entry; ids preloaded out of order may outlive their TTL in
        # memory a little, but every lookup checks its own entry's age, so they never count.
        while self._seen:
            message_id, seen_at = next(iter(self._seen.items()))
            if not self._expired(seen_at, now):
                return
            del self._seen[message_id]

    def _insert(self, message_id: str, seen_at: float) -> None:
        self._seen[message_id] = seen_at
        self._seen.move_to_end(message_id)
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)

    def reserve(self, message_id: str, until: float | None = None) -> bool:
        """Mark ``message_id`` as in flight; False (a duplicate) if it is remembered still.

        It is remembered for the TTL, or until ``until`` (epoch seconds) if that is later."""
        now = self.clock.seconds()
        self._purge(now)
        seen_at = self._seen.get(message_id)
        if seen_at is not None and not self._expired(seen_at, now):
            # Counted (snsd_duplicates_total) and logged by the endpoint, which answers it.
            return False
        # Kept as the time the TTL counts from: "until" becomes a time that far before it.
        self._insert(message_id, now if until is None else max(now, until - self.ttl))
        return True

    def release(self, message_id: str) -> None:
        """Forget ``message_id``: it was refused with a 5xx and SNS will send it again."""
        self._seen.pop(message_id, None)

    def remember(self, message_id: str, accepted_at: float) -> None:
        """Preload an id accepted at ``accepted_at`` (epoch seconds), e.g. from the spool at startup."""
        now = self.clock.seconds()
        if self._expired(accepted_at, now):
            return
        previous = self._seen.get(message_id)
        self._insert(message_id, accepted_at if previous is None else max(previous, accepted_at))

    def __contains__(self, message_id: object) -> bool:
        seen_at = self._seen.get(message_id)  # type: ignore[call-overload]
        return seen_at is not None and not self._expired(seen_at, self.clock.seconds())

    def __len__(self) -> int:
        self._purge(self.clock.seconds())
        return len(self._seen)


class AcceptedIds:
    """ "Already accepted", in memory and in the spool, behind one interface.

    The memory (:class:`DedupCache`) answers at once and catches concurrent deliveries of one
    message; the spool keeps every accepted id for the TTL and across restarts, and refuses a
    redelivery the memory has let go of atomically with the write itself (``SQLiteSpool.add``
    fires with None; the dispatcher raises ``AlreadyAccepted``).
    """

    def __init__(self, memory: DedupCache, spool, max_age: float = 3600.0) -> None:
        """``max_age``: the verifier's ``--max-age``; a message is remembered at least as long as
        it could pass the verifier's Timestamp check again."""
        self.memory = memory
        self._spool = spool
        self._fresh_for = max_age + MAX_FUTURE_SKEW

    def until(self, envelope: SNSEnvelope) -> float:
        """When ``envelope``'s MessageId may be forgotten: the TTL after acceptance, or, for a
        message stamped ahead of our clock, its signed Timestamp + max-age + the allowed skew.

        A replay is refused as stale only once its Timestamp is older than max-age; remembered
        for the TTL from acceptance alone, a message stamped up to the skew ahead would be
        fresh, and new, again for that long (issue 15, item 2)."""
        remember_until = self.memory.clock.seconds() + self.memory.ttl
        try:
            signed_at = parse_timestamp(envelope.timestamp)
        except ValueError:  # a raw delivery carries none: it was never checked
            return remember_until
        return max(remember_until, signed_at + self._fresh_for)

    def reserve(self, message_id: str, until: float | None = None) -> bool:
        """Mark ``message_id`` as being handled until ``until`` (see :meth:`until`); False: it
        was accepted already (a duplicate)."""
        return self.memory.reserve(message_id, until)

    def release(self, message_id: str) -> None:
        """Refused before anything was recorded (a 5xx): SNS's retry must get in."""
        self.memory.release(message_id)

    def forget(self, message_id: str) -> None:
        """Recorded, then answered 5xx after all (``--ack after-job``): let SNS's retry in again."""
        self.memory.release(message_id)

        def failed(failure):
            log.failure(
                "could not forget {message_id}: its retry will read as a duplicate", failure, message_id=message_id
            )

        self._spool.forget(message_id).addErrback(failed)

    def load(self, recent: tuple[tuple[str, float], ...]) -> None:
        """Preload ``(message_id, accepted_at)`` pairs the spool found at startup."""
        for message_id, accepted_at in recent:
            self.memory.remember(message_id, accepted_at)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self.memory
