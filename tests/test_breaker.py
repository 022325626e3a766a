"""The circuit breaker, transition by transition, on a fake clock."""

import pytest
from twisted.internet.task import Clock

from snsd.breaker import CircuitBreaker, Permit, State


@pytest.fixture
def clock():
    return Clock()


def make(clock, **kwargs):
    kwargs.setdefault("max_failures", 3)
    kwargs.setdefault("cooldown", 10.0)
    return CircuitBreaker(clock, **kwargs)


def fail(breaker, times=1):
    for _ in range(times):
        permit = breaker.acquire()
        assert permit is not None
        breaker.failed(permit)


def test_starts_closed_and_permits_jobs(clock):
    breaker = make(clock)
    assert breaker.state is State.CLOSED
    assert breaker.acquire() == Permit(trial=False)
    assert breaker.snapshot()["state"] == "closed"
    assert breaker.snapshot()["active"] is False


def test_opens_after_max_consecutive_failures(clock):
    breaker = make(clock)
    fail(breaker, 2)
    assert breaker.state is State.CLOSED
    fail(breaker)
    assert breaker.state is State.OPEN
    assert breaker.acquire() is None
    snapshot = breaker.snapshot()
    assert snapshot["state"] == "open"
    assert snapshot["active"] is True
    assert snapshot["consecutive_failures"] == 3
    assert snapshot["cooldown_remaining"] == 10.0


def test_a_success_resets_the_count(clock):
    breaker = make(clock)
    fail(breaker, 2)
    breaker.succeeded(breaker.acquire())
    assert breaker.consecutive_failures == 0
    fail(breaker, 2)
    assert breaker.state is State.CLOSED


def test_last_failure_time_comes_from_the_clock(clock):
    breaker = make(clock)
    clock.advance(1234.5)
    fail(breaker)
    assert breaker.snapshot()["last_failure_time"] == "1970-01-01T00:20:34.500Z"


def test_cooldown_counts_down_then_half_opens(clock):
    breaker = make(clock)
    fail(breaker, 3)
    clock.advance(4)
    assert breaker.cooldown_remaining() == pytest.approx(6)
    clock.advance(5.9)
    assert breaker.state is State.OPEN
    clock.advance(0.1)
    assert breaker.state is State.HALF_OPEN
    assert breaker.snapshot()["state"] == "half_open"


def test_half_open_allows_exactly_one_trial_at_a_time(clock):
    breaker = make(clock)
    fail(breaker, 3)
    clock.advance(10)
    trial = breaker.acquire()
    assert trial.trial
    assert breaker.acquire() is None
    breaker.release(trial)
    assert breaker.acquire() == trial


def test_a_trial_from_an_earlier_half_open_period_says_nothing_about_now(clock):
    breaker = make(clock)
    fail(breaker, 3)
    clock.advance(10)
    stale = breaker.acquire()  # a trial starts...
    breaker.force_open()  # ...an operator opens the breaker and resets it while it runs
    breaker.reset()
    fail(breaker, 3)
    clock.advance(10)
    current = breaker.acquire()
    assert current.trial and current != stale
    breaker.succeeded(stale)
    assert breaker.state is State.HALF_OPEN  # the current trial decides, not the stale one
    breaker.failed(stale)
    assert breaker.state is State.HALF_OPEN
    breaker.succeeded(current)
    assert breaker.state is State.CLOSED


def test_successful_trial_closes(clock):
    breaker = make(clock)
    fail(breaker, 3)
    clock.advance(10)
    breaker.succeeded(breaker.acquire())
    assert breaker.state is State.CLOSED
    assert breaker.consecutive_failures == 0


def test_several_successful_trials_needed_when_configured(clock):
    breaker = make(clock, half_open_successes=2)
    fail(breaker, 3)
    clock.advance(10)
    breaker.succeeded(breaker.acquire())
    assert breaker.state is State.HALF_OPEN
    breaker.succeeded(breaker.acquire())
    assert breaker.state is State.CLOSED


def test_failed_trial_reopens_with_doubled_cooldown_up_to_the_cap(clock):
    breaker = make(clock, max_cooldown=35.0)
    fail(breaker, 3)
    expected = [20.0, 35.0, 35.0]
    clock.advance(10)
    for cooldown in expected:
        breaker.failed(breaker.acquire())
        assert breaker.state is State.OPEN
        assert breaker.cooldown_remaining() == cooldown
        clock.advance(cooldown - 0.001)
        assert breaker.state is State.OPEN
        clock.advance(0.001)
        assert breaker.state is State.HALF_OPEN


def test_default_cap_is_ten_times_the_cooldown(clock):
    breaker = make(clock)
    assert breaker.max_cooldown == 100.0


def test_closing_restores_the_base_cooldown(clock):
    breaker = make(clock)
    fail(breaker, 3)
    clock.advance(10)
    breaker.failed(breaker.acquire())  # cooldown now 20
    clock.advance(20)
    breaker.succeeded(breaker.acquire())
    assert breaker.state is State.CLOSED
    fail(breaker, 3)
    assert breaker.cooldown_remaining() == 10.0


def test_results_of_jobs_started_before_opening_do_not_decide_the_trial(clock):
    breaker = make(clock)
    early = breaker.acquire()
    fail(breaker, 3)
    clock.advance(10)
    breaker.succeeded(early)  # not the trial
    assert breaker.state is State.HALF_OPEN


def test_reset_closes_at_once_and_cancels_the_timer(clock):
    breaker = make(clock)
    fail(breaker, 3)
    breaker.reset()
    assert breaker.state is State.CLOSED
    assert breaker.consecutive_failures == 0
    assert clock.getDelayedCalls() == []


def test_force_open_holds_until_reset(clock):
    breaker = make(clock)
    breaker.force_open()
    assert breaker.acquire() is None
    clock.advance(10_000)
    assert breaker.state is State.FORCED_OPEN
    assert breaker.snapshot()["state"] == "open"
    assert breaker.snapshot()["forced"] is True
    breaker.reset()
    assert breaker.acquire() is not None


def test_listeners_hear_each_transition(clock):
    breaker = make(clock)
    heard = []
    breaker.on_change(heard.append)
    fail(breaker, 3)
    clock.advance(10)
    breaker.succeeded(breaker.acquire())
    assert heard == [State.OPEN, State.HALF_OPEN, State.CLOSED]


def test_stopping_the_service_cancels_the_cooldown_timer(clock):
    breaker = make(clock)
    breaker.startService()
    fail(breaker, 3)
    assert len(clock.getDelayedCalls()) == 1
    breaker.stopService()
    assert clock.getDelayedCalls() == []


# -- pinned by mutation testing (issue 18): each of these once let a plausible bug through ------------


def transitions(from_state, to_state):
    from prometheus_client import REGISTRY

    labels = {"from_state": from_state, "to_state": to_state}
    return REGISTRY.get_sample_value("snsd_breaker_transitions_total", labels) or 0.0


def test_trial_successes_start_again_after_a_failed_trial(clock):
    breaker = make(clock, half_open_successes=2)
    fail(breaker, 3)
    clock.advance(10)
    breaker.succeeded(breaker.acquire())  # 1 of 2
    breaker.failed(breaker.acquire())  # the second trial fails: open again, for 20 s
    clock.advance(20)
    breaker.succeeded(breaker.acquire())  # 1 of 2 again, not 2 of 2
    assert breaker.state is State.HALF_OPEN
    breaker.succeeded(breaker.acquire())
    assert breaker.state is State.CLOSED


def test_forced_open_reports_the_cooldown_as_remaining(clock):
    breaker = make(clock)
    breaker.force_open()
    clock.advance(5)
    assert breaker.cooldown_remaining() == 10.0  # what Retry-After says: it does not count down
    assert breaker.snapshot()["cooldown_remaining"] == 10.0


def test_open_cooldown_counts_down_to_exactly_zero(clock):
    breaker = make(clock)
    fail(breaker, 3)
    clock.advance(4)
    assert breaker.cooldown_remaining() == 6.0
    assert breaker.snapshot()["cooldown_remaining"] == 6.0
    assert make(clock).cooldown_remaining() == 0.0


def test_reset_restores_the_base_cooldown(clock):
    breaker = make(clock)
    fail(breaker, 3)
    clock.advance(10)
    breaker.failed(breaker.acquire())  # cooldown doubled to 20
    assert breaker.snapshot()["cooldown"] == 20.0
    breaker.reset()
    assert breaker.snapshot()["cooldown"] == 10.0
    fail(breaker, 3)
    assert breaker.cooldown_remaining() == 10.0


def test_failures_are_counted_while_open_and_half_open(clock):
    breaker = make(clock)
    running = [breaker.acquire() for _ in range(3)]
    fail(breaker, 3)
    assert breaker.consecutive_failures == 3
    breaker.failed(running[0])  # a job started before opening, failing while open
    assert breaker.consecutive_failures == 4
    clock.advance(10)
    breaker.failed(running[1])  # ... and while half-open: counted, but not the trial
    assert (breaker.consecutive_failures, breaker.state) == (5, State.HALF_OPEN)
    assert breaker.last_failure_time == 10.0


def test_a_success_while_open_changes_nothing(clock):
    breaker = make(clock)
    early = breaker.acquire()
    fail(breaker, 3)
    breaker.succeeded(early)
    assert (breaker.state, breaker.consecutive_failures) == (State.OPEN, 3)


def test_a_released_trial_permit_lets_another_trial_run(clock):
    breaker = make(clock)
    fail(breaker, 3)
    clock.advance(10)
    trial = breaker.acquire()
    assert breaker.acquire() is None
    breaker.release(trial)
    assert breaker.acquire() == Permit(trial=True, period=trial.period)


def test_releasing_an_ordinary_permit_keeps_the_trial_running(clock):
    breaker = make(clock)
    early = breaker.acquire()
    fail(breaker, 3)
    clock.advance(10)
    assert breaker.acquire() is not None  # the trial
    breaker.release(early)
    assert breaker.acquire() is None


def test_a_no_op_transition_is_not_counted_or_announced(clock):
    breaker = make(clock)
    heard = []
    breaker.on_change(heard.append)
    before = transitions("closed", "closed")
    breaker.reset()  # already closed
    assert heard == []
    assert transitions("closed", "closed") == before
    breaker.force_open()
    forced = transitions("forced_open", "forced_open")
    breaker.force_open()
    assert heard == [State.FORCED_OPEN]
    assert transitions("forced_open", "forced_open") == forced


def test_each_transition_is_counted_once(clock):
    breaker = make(clock)
    before = transitions("closed", "open")
    fail(breaker, 3)
    assert transitions("closed", "open") == before + 1


def test_the_state_gauge_follows_the_state(clock):
    from prometheus_client import REGISTRY

    def gauge(state):
        return REGISTRY.get_sample_value("snsd_breaker_state", {"state": state})

    breaker = make(clock)
    fail(breaker, 3)
    assert (gauge("open"), gauge("closed")) == (1.0, 0.0)
    breaker.reset()
    assert (gauge("open"), gauge("closed")) == (0.0, 1.0)


def test_not_permitted_requests_are_counted(clock):
    from prometheus_client import REGISTRY

    breaker = make(clock)
    fail(breaker, 3)
    before = REGISTRY.get_sample_value("snsd_breaker_calls_not_permitted_total") or 0.0
    assert breaker.acquire() is None
    assert REGISTRY.get_sample_value("snsd_breaker_calls_not_permitted_total") == before + 1


def test_last_failure_time_is_reported_in_iso_8601(clock):
    breaker = make(clock)
    assert breaker.snapshot()["last_failure_time"] is None
    clock.advance(1.5)
    fail(breaker)
    assert breaker.snapshot()["last_failure_time"] == "1970-01-01T00:00:01.500Z"


def test_the_defaults_are_the_documented_ones(clock):
    breaker = CircuitBreaker(clock)
    assert (breaker.max_failures, breaker.base_cooldown, breaker.max_cooldown, breaker.half_open_successes) == (
        5,
        60.0,
        600.0,
        1,
    )
    assert breaker.name == "breaker"  # the daemon's MultiService finds it by this name


def test_is_open_only_when_no_job_may_start(clock):
    breaker = make(clock)
    assert not breaker.is_open
    fail(breaker, 3)
    assert breaker.is_open
    clock.advance(10)
    assert not breaker.is_open  # half-open: a trial may start
    breaker.force_open()
    assert breaker.is_open


def test_a_new_breaker_publishes_closed_as_its_state(clock):
    from prometheus_client import REGISTRY

    make(clock).force_open()
    make(clock)
    assert REGISTRY.get_sample_value("snsd_breaker_state", {"state": "closed"}) == 1.0
    assert REGISTRY.get_sample_value("snsd_breaker_state", {"state": "forced_open"}) == 0.0


def test_the_remaining_cooldown_is_reported_to_the_millisecond(clock):
    breaker = make(clock)
    fail(breaker, 3)
    clock.advance(9.5)
    assert breaker.cooldown_remaining() == 0.5
    clock.advance(0.1234)
    assert breaker.snapshot()["cooldown_remaining"] == 0.377


def test_a_failed_trial_counts_as_a_failure(clock):
    breaker = make(clock)
    fail(breaker, 3)
    clock.advance(10)
    breaker.failed(breaker.acquire())
    assert (breaker.state, breaker.consecutive_failures) == (State.OPEN, 4)


def test_recovering_shows_the_base_cooldown_again(clock):
    breaker = make(clock)
    fail(breaker, 3)
    clock.advance(10)
    breaker.failed(breaker.acquire())  # cooldown 20
    clock.advance(20)
    breaker.succeeded(breaker.acquire())
    assert breaker.snapshot()["cooldown"] == 10.0


def test_each_transition_is_logged(clock):
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        breaker = make(clock)
        fail(breaker, 3)
    finally:
        globalLogPublisher.removeObserver(events.append)
    [event] = [e for e in events if e.get("log_format", "").startswith("breaker {from_state}")]
    assert (event["from_state"], event["to_state"], event["failures"], event["cooldown"]) == ("closed", "open", 3, 10.0)


def test_stopping_the_service_marks_it_stopped(clock):
    breaker = make(clock)
    breaker.startService()
    breaker.stopService()
    assert not breaker.running
