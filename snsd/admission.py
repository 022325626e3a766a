"""Admission: what happens to a trusted SNS message, decided in one place.

:class:`Admission` takes an envelope that passed the trust checks (or a raw delivery the
operator chose to accept unverified) and returns one :class:`Outcome`: accepted, spooled, done,
skipped, duplicate, ignored, confirmed, unsubscribed, rejected, backpressure, running, failed,
refused, draining or starting.  It owns the policy around that decision:

- "already accepted": :class:`snsd.trust.dedup.AcceptedIds` (memory and spool behind one interface);
- the breaker's meaning for new and spooled work: :class:`BreakerPolicy`, the one reader of
  ``--breaker-mode``;
- when to answer: ``--ack spooled`` (once recorded) or ``after-job`` (once the jobs end);
- draining and starting: the dispatcher's own flags, read here, set nowhere else.

It knows nothing of HTTP: :mod:`snsd.web` maps each outcome to a status, a body and headers.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace

from twisted.internet.defer import TimeoutError as DeferredTimeout

from snsd.envelope import NOTIFICATION, SUBSCRIPTION_CONFIRMATION, SNSEnvelope
from snsd.records import parse_s3_message
from snsd.trust.errors import TrustError

# SNS gives up on an answer after 15 s; answer "retry" comfortably before that.
AFTER_JOB_WAIT = 12.0


class BreakerMode(enum.Enum):
    """What new work meets while the breaker is open (``--breaker-mode``)."""

    SKIP = "skip"  # kept as dead letters at once
    REJECT = "reject"  # refused: SNS retries later
    SPOOL = "spool"  # spooled, runs once the breaker lets trials through


class AckMode(enum.Enum):
    """When SNS gets its answer (``--ack``)."""

    SPOOLED = "spooled"  # once the records are durably spooled
    AFTER_JOB = "after-job"  # once their jobs end


class Kind(enum.Enum):
    ACCEPTED = "accepted"
    SPOOLED = "spooled"  # accepted while the breaker is not closed: runs later
    DONE = "done"  # --ack after-job: every job succeeded
    SKIPPED = "skipped"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    CONFIRMED = "confirmed"
    UNSUBSCRIBED = "unsubscribed"
    REJECTED = "rejected"  # breaker open in reject mode: retry after ``retry_after`` s
    BACKPRESSURE = "backpressure"
    RUNNING = "running"  # --ack after-job: jobs still running at AFTER_JOB_WAIT
    FAILED = "failed"  # --ack after-job: a job failed
    REFUSED = "refused"  # the subscription could not be confirmed (a TrustError's status and reason)
    DRAINING = "draining"
    STARTING = "starting"


# Outcomes SNS will send again: the MessageId must not read as a duplicate then.  A tuple, not a
# set: membership by identity, where a set would call Enum.__hash__ (Python code) per message.
RETRIED = (Kind.REJECTED, Kind.BACKPRESSURE, Kind.RUNNING, Kind.FAILED, Kind.REFUSED)


@dataclass(frozen=True)
class Outcome:
    """What became of one message; the fields a kind does not use stay at their defaults."""

    kind: Kind
    jobs: int = 0  # records taken (accepted, spooled, skipped, ...)
    ignored: int = 0  # records of the message left out as malformed or not ObjectCreated
    reason: str | None = None  # why records were ignored, or a refusal's reason
    status: int | None = None  # REFUSED: the HTTP status the trust check chose
    retry_after: int | None = None  # REJECTED: seconds until the breaker lets a trial through
    detail: str | None = None  # BACKPRESSURE: how many records wait
    subscription_arn: str | None = None  # CONFIRMED


DRAINING = Outcome(Kind.DRAINING)
STARTING = Outcome(Kind.STARTING)
DUPLICATE = Outcome(Kind.DUPLICATE)
UNSUBSCRIBED = Outcome(Kind.UNSUBSCRIBED)


class Backpressure(Exception):
    """Too many records are waiting; the message is refused and nothing is recorded."""


class AlreadyAccepted(Exception):
    """The spool accepted this MessageId already: a redelivery, answered as a duplicate."""


class BreakerPolicy:
    """The breaker mode's one reader: what new work and spooled work do in the breaker's state."""

    def __init__(self, breaker, mode: BreakerMode | str = BreakerMode.SKIP):
        self.breaker = breaker
        self.mode = BreakerMode(mode.value if isinstance(mode, enum.Enum) else mode)

    def on_arrival(self) -> Outcome | None:
        """None: spool the message; else what to answer instead (skip or reject)."""
        if not self.breaker.is_open or self.mode is BreakerMode.SPOOL:
            return None
        if self.mode is BreakerMode.SKIP:
            return Outcome(Kind.SKIPPED)
        return Outcome(Kind.REJECTED, retry_after=max(1, math.ceil(self.breaker.cooldown_remaining())))

    def accepted_kind(self) -> Kind:
        """Spooled records run at once while the breaker is closed; otherwise later."""
        return Kind.SPOOLED if self.breaker.active else Kind.ACCEPTED

    def skips_spooled(self) -> bool:
        """True: records already spooled become dead letters instead of waiting (skip mode, open)."""
        return self.mode is BreakerMode.SKIP and self.breaker.is_open


class Admission:
    """Trusted envelope in, :class:`Outcome` out."""

    def __init__(self, dispatcher, accepted, policy: BreakerPolicy, confirmer, clock, ack: AckMode | str):
        self.dispatcher = dispatcher
        self.accepted = accepted
        self.policy = policy
        self.confirmer = confirmer
        self.clock = clock
        self.ack = AckMode(ack.value if isinstance(ack, enum.Enum) else ack)

    def refusal(self) -> Outcome | None:
        """Asked before a request's body is even read: DRAINING, STARTING, or None (come in)."""
        if self.dispatcher.draining:
            return DRAINING
        if not self.dispatcher.ready:
            return STARTING
        return None

    async def admit(self, envelope: SNSEnvelope) -> Outcome:
        """Decide, once per MessageId, what becomes of a trusted envelope."""
        until = self.accepted.until(envelope)
        if not self.accepted.reserve(envelope.message_id, until):
            return DUPLICATE
        try:
            outcome = await self._admit(envelope, until)
        except BaseException:
            self.accepted.release(envelope.message_id)
            raise
        if outcome.kind in RETRIED:
            # Refused for now: SNS will retry, and the retry must not look like a duplicate.
            self.accepted.release(envelope.message_id)
        return outcome

    async def _admit(self, envelope: SNSEnvelope, until: float) -> Outcome:
        if envelope.type == SUBSCRIPTION_CONFIRMATION:
            try:
                arn = await self.confirmer.confirm(envelope)
            except TrustError as e:
                return Outcome(Kind.REFUSED, status=e.status, reason=e.reason)
            return Outcome(Kind.CONFIRMED, subscription_arn=arn)
        if envelope.type != NOTIFICATION:
            return UNSUBSCRIBED
        parsed = parse_s3_message(envelope.message, envelope.message_id, envelope.topic_arn)
        if not parsed.records:
            return Outcome(Kind.IGNORED, reason=parsed.ignored)
        outcome = await self._submit(envelope, parsed.records, until)
        if parsed.ignored_records and outcome.jobs:
            # Some records were left out (malformed, not ObjectCreated); the rest were taken.
            outcome = replace(outcome, ignored=parsed.ignored_records, reason=parsed.ignored)
        return outcome

    async def _submit(self, envelope: SNSEnvelope, records, until: float) -> Outcome:
        jobs = len(records)
        instead = self.policy.on_arrival()
        if instead is not None:
            if instead.kind is not Kind.SKIPPED:
                return instead
            try:
                await self.dispatcher.skip(envelope, records, remember_until=until)
            except AlreadyAccepted:
                return DUPLICATE
            return Outcome(Kind.SKIPPED, jobs=jobs)
        after_job = self.ack is AckMode.AFTER_JOB
        try:
            accepted = await self.dispatcher.accept(envelope, records, track=after_job, remember_until=until)
        except Backpressure as e:
            return Outcome(Kind.BACKPRESSURE, detail=str(e))
        except AlreadyAccepted:
            return DUPLICATE
        if not after_job:
            return Outcome(self.policy.accepted_kind(), jobs=jobs)
        try:
            _, done = accepted
            all_ok = await done.addTimeout(AFTER_JOB_WAIT, self.clock)
        except DeferredTimeout:
            self.accepted.forget(envelope.message_id)  # SNS retries a 5xx: the retry is not a duplicate
            return Outcome(Kind.RUNNING, jobs=jobs)
        if not all_ok:
            self.accepted.forget(envelope.message_id)
            return Outcome(Kind.FAILED, jobs=jobs)
        return Outcome(Kind.DONE, jobs=jobs)


class Readiness:
    """What ``/readyz`` reports: the pool runs, the spool is open, no drain has begun."""

    def __init__(self, pool, dispatcher):
        self.pool = pool
        self.dispatcher = dispatcher

    def checks(self) -> dict:
        return {
            "listening": True,
            "pool": self.pool.is_ready(),
            "spool": self.dispatcher.ready,
            "draining": self.dispatcher.draining,
        }

    @staticmethod
    def ready(checks: dict) -> bool:
        return checks["pool"] and checks["spool"] and not checks["draining"]
