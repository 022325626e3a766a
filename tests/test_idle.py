"""IdleWaiters: the drains' wait for work in progress, bounded by a timeout on the given clock."""

from twisted.internet.task import Clock

from snsd.idle import IdleWaiters


def fired(d):
    results = []
    d.addCallback(results.append)
    return results


def test_settle_fires_every_waiter_true_and_cancels_their_timers():
    clock = Clock()
    idle = IdleWaiters(clock)
    first, second = fired(idle.wait(5)), fired(idle.wait(10))
    assert idle and first == [] and second == []
    idle.settle()
    assert first == [True] and second == [True]
    assert not idle and clock.getDelayedCalls() == []


def test_a_waiter_whose_timeout_passes_fires_false_and_settle_leaves_it_alone():
    clock = Clock()
    idle = IdleWaiters(clock)
    short, long = fired(idle.wait(5)), fired(idle.wait(10))
    clock.advance(5)
    assert short == [False] and long == []
    idle.settle()
    assert short == [False] and long == [True]
