"""ShortJobBatches alone, on a fake clock: how the dispatcher sizes its hand-offs to the pool.
tests/test_dispatcher.py checks the same behaviour through the dispatcher and a real pool."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from snsd.batching import BATCH_MAX, BATCH_SECONDS, BATCH_WAIT, LONG_JOB, SHORT_JOB, ShortJobBatches


def make(wait=BATCH_WAIT):
    clock = Clock()
    woken = []
    return clock, ShortJobBatches(clock, lambda: woken.append(clock.seconds()), wait=wait), woken


def test_before_any_job_has_run_every_worker_takes_one_record():
    _, batches, _ = make()
    assert not batches.short
    assert (batches.concurrency(4), batches.size(), batches.room(4)) == (4, 1, 4)


def test_sub_millisecond_jobs_go_one_batch_at_a_time_of_about_batch_seconds():
    _, batches, _ = make()
    batches.finished(0.0002)
    assert batches.short
    assert batches.concurrency(4) == 1
    assert batches.size() == int(BATCH_SECONDS / 0.0002)
    _, batches, _ = make()
    batches.finished(0.00001)
    assert batches.size() == BATCH_MAX
    token = batches.handed_off()
    assert batches.room(4) == 0  # one batch at a time
    batches.handed_back(token)
    assert batches.room(4) == BATCH_MAX


def test_jobs_averaging_over_a_millisecond_go_one_by_one_to_every_worker():
    _, batches, _ = make()
    batches.finished(SHORT_JOB / 2)
    for _ in range(10):
        batches.finished(0.05)
    assert not batches.short
    assert (batches.concurrency(4), batches.size()) == (4, 1)


def test_a_batch_that_is_not_full_waits_for_company_then_goes():
    clock, batches, woken = make()
    batches.finished(0.0001)
    assert batches.hold(not_full=True, may_wait=True)
    clock.advance(BATCH_WAIT / 2)
    assert batches.hold(not_full=True, may_wait=True)  # the same wait, not a new one
    clock.advance(BATCH_WAIT / 2)
    assert woken == [BATCH_WAIT]
    assert not batches.hold(not_full=True, may_wait=True)


def test_a_full_batch_or_one_someone_waits_on_goes_at_once():
    clock, batches, woken = make()
    batches.finished(0.0001)
    assert not batches.hold(not_full=False, may_wait=True)
    assert not batches.hold(not_full=True, may_wait=False)
    assert not make(wait=0)[1].hold(not_full=True, may_wait=True)
    clock.advance(1)
    assert woken == []  # nothing was left waiting


def test_long_jobs_never_wait_for_company():
    _, batches, _ = make()
    batches.finished(0.05)
    assert not batches.hold(not_full=True, may_wait=True)


def test_stop_holding_cancels_the_wait():
    clock, batches, woken = make()
    batches.finished(0.0001)
    assert batches.hold(not_full=True, may_wait=True)
    batches.stop_holding()
    clock.advance(1)
    assert woken == []


def test_a_hand_off_running_past_long_job_lifts_the_batching_at_once():
    clock, batches, woken = make()
    batches.finished(0.0001)
    token = batches.handed_off()
    clock.advance(LONG_JOB)
    assert woken == [LONG_JOB]
    assert not batches.short and batches.concurrency(4) == 4
    batches.handed_back(token)


def test_short_hand_offs_keep_the_watch_going_without_waking_anyone():
    clock, batches, woken = make()
    batches.finished(0.0001)
    first = batches.handed_off()
    clock.advance(LONG_JOB / 2)
    batches.handed_back(first)
    batches.handed_off()
    clock.advance(LONG_JOB / 2)  # the watch looks: the running hand-off is young
    assert woken == [] and batches.short
    clock.advance(LONG_JOB)
    assert woken == [pytest.approx(LONG_JOB * 2)]
