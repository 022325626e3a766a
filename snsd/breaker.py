"""The circuit breaker: a service with an explicit state machine.

It knows nothing of HTTP.  The dispatcher asks it for a :class:`Permit` before starting a
job and reports each job's outcome with that permit; the web layer reads its state to
decide what to answer while it is open.

    closed --N consecutive failures--> open --cooldown--> half_open
    half_open --trial succeeds (x required)--> closed
    half_open --trial fails--> open (cooldown doubled, capped)
    any --reset--> closed          any --force_open--> forced_open (until reset)

Every "what happens to input X in state Y" lives in the method named after X.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime

from snsd import metrics
from snsd.logs import Logger
from snsd.timestamps import iso

log = Logger()


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"


@dataclass(frozen=True)
class Permit:
    """Leave to run one job; ``trial`` marks the single half-open probe, and ``period`` which
    half-open period it probes: a trial from an earlier one (the breaker was reset and opened
    again while it ran) says nothing about now."""

    trial: bool = False
    period: int = 0


class CircuitBreaker(Service):
    name = "breaker"

    def __init__(
        self,
        clock: IReactorTime,
        max_failures: int = 5,
        cooldown: float = 60.0,
        max_cooldown: float | None = None,
        half_open_successes: int = 1,
    ):
        self._clock = clock
        self.max_failures = max_failures
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown if max_cooldown is not None else 10 * cooldown
        self.half_open_successes = half_open_successes
        self.state = State.CLOSED
        self.consecutive_failures = 0
        self.last_failure_time: float | None = None
        self._cooldown = cooldown
        self._open_until: float | None = None
        self._timer = None
        self._trial_running = False
        self._trial_successes = 0
        self._period = 0  # counts transitions: a trial permit belongs to the period it was given in
        self._listeners: list[Callable[[State], None]] = []
        _publish_state(self.state)

    # -- queries ---------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """True when jobs may not run freely (open, forced open, or probing)."""
        return self.state is not State.CLOSED

    @property
    def is_open(self) -> bool:
        """Open (by failures or by hand): no job may start, not even a trial."""
        return self.state in (State.OPEN, State.FORCED_OPEN)

    def cooldown_remaining(self) -> float:
        if self.state is State.FORCED_OPEN:
            return float(self._cooldown)
        if self.state is not State.OPEN or self._open_until is None:
            return 0.0
        return max(0.0, self._open_until - self._clock.seconds())

    def snapshot(self) -> dict:
        state = State.OPEN if self.state is State.FORCED_OPEN else self.state
        return {
            "state": state.value,
            "active": self.active,
            "forced": self.state is State.FORCED_OPEN,
            "consecutive_failures": self.consecutive_failures,
            "last_failure_time": None if self.last_failure_time is None else iso(self.last_failure_time),
            "cooldown_remaining": round(self.cooldown_remaining(), 3),
            "cooldown": self._cooldown,
        }

    def on_change(self, listener: Callable[[State], None]) -> None:
        """Call ``listener(new_state)`` after every transition (the dispatcher pumps on it)."""
        self._listeners.append(listener)

    # -- inputs ----------------------------------------------------------------------------

    def acquire(self) -> Permit | None:
        """Ask to start one job; ``None`` means not now."""
        if self.state is State.CLOSED:
            return Permit()
        if self.state is State.HALF_OPEN and not self._trial_running:
            self._trial_running = True
            return Permit(trial=True, period=self._period)
        metrics.BREAKER_NOT_PERMITTED.inc()
        return None

    def release(self, permit: Permit) -> None:
        """Give back a permit whose job never ran."""
        if self._current_trial(permit):
            self._trial_running = False

    def succeeded(self, permit: Permit) -> None:
        if self.state is State.CLOSED:
            self.consecutive_failures = 0
        elif self._current_trial(permit):
            self._trial_running = False
            self._trial_successes += 1
            if self._trial_successes >= self.half_open_successes:
                self._cooldown = self.base_cooldown
                self._enter(State.CLOSED)
        # A job that started before the breaker opened says nothing about now.

    def failed(self, permit: Permit) -> None:
        self.last_failure_time = self._clock.seconds()
        if self.state is State.CLOSED:
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.max_failures:
                self._cooldown = self.base_cooldown
                self._enter(State.OPEN)
        elif self._current_trial(permit):
            self._trial_running = False
            self.consecutive_failures += 1
            self._cooldown = min(self._cooldown * 2, self.max_cooldown)
            self._enter(State.OPEN)
        else:
            self.consecutive_failures += 1

    def _current_trial(self, permit: Permit) -> bool:
        return permit.trial and self.state is State.HALF_OPEN and permit.period == self._period

    def reset(self) -> None:
        self.consecutive_failures = 0
        self._cooldown = self.base_cooldown
        self._enter(State.CLOSED)

    def force_open(self) -> None:
        self._enter(State.FORCED_OPEN)

    def _cooldown_elapsed(self) -> None:
        self._timer = None
        if self.state is State.OPEN:
            self._enter(State.HALF_OPEN)

    # -- transitions -----------------------------------------------------------------------

    def _enter(self, new: State) -> None:
        old = self.state
        self._period += 1
        self._cancel_timer()
        self._trial_running = False
        self._trial_successes = 0
        self._open_until = None
        if new is State.CLOSED:
            self.consecutive_failures = 0
        if new is State.OPEN:
            self._open_until = self._clock.seconds() + self._cooldown
            self._timer = self._clock.callLater(self._cooldown, self._cooldown_elapsed)
        self.state = new
        if old is new:
            return
        metrics.BREAKER_TRANSITIONS.labels(from_state=old.value, to_state=new.value).inc()
        _publish_state(new)
        log.info(
            "breaker {from_state} -> {to_state} (failures={failures}, cooldown={cooldown}s)",
            from_state=old.value,
            to_state=new.value,
            failures=self.consecutive_failures,
            cooldown=self._cooldown,
        )
        for listener in list(self._listeners):
            listener(new)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def stopService(self):
        self._cancel_timer()
        return Service.stopService(self)


def _publish_state(current: State) -> None:
    for state in State:
        metrics.BREAKER_STATE.labels(state=state.value).set(1 if state is current else 0)
