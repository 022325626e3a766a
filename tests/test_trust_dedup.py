"""Duplicate MessageIds, on a fake clock."""

from __future__ import annotations

import gc
import weakref

import pytest
from twisted.internet.task import Clock

from snsd.trust.dedup import DedupCache


def make(ttl=3600.0, max_entries=100):
    clock = Clock()
    clock.advance(1_000_000)
    return clock, DedupCache(clock, ttl=ttl, max_entries=max_entries)


def test_first_delivery_passes_and_the_second_is_a_duplicate():
    _, cache = make()
    assert cache.reserve("m-1")
    assert "m-1" in cache
    assert not cache.reserve("m-1")
    assert cache.reserve("m-2")
    assert "m-3" not in cache


def test_a_duplicate_within_the_ttl_is_refused_and_after_it_accepted():
    clock, cache = make(ttl=60)
    assert cache.reserve("m")
    clock.advance(59.9)
    assert not cache.reserve("m")
    clock.advance(0.1)
    assert "m" not in cache
    assert cache.reserve("m")
    assert not cache.reserve("m")


def test_release_after_a_5xx_lets_the_retry_through():
    _, cache = make()
    assert cache.reserve("m")
    cache.release("m")
    assert "m" not in cache
    assert cache.reserve("m")
    cache.release("never-seen")  # harmless


def test_remembered_ids_count_from_their_acceptance_time():
    clock, cache = make(ttl=100)
    now = clock.seconds()
    cache.remember("old", now - 100)  # already expired: not kept
    cache.remember("recent", now - 90)
    assert "old" not in cache
    assert "recent" in cache
    assert not cache.reserve("recent")
    clock.advance(10)
    assert cache.reserve("recent")


def test_memory_is_bounded_by_evicting_the_oldest():
    clock, cache = make(max_entries=3)
    for i in range(5):
        clock.advance(1)
        assert cache.reserve(f"m-{i}")
    assert len(cache) == 3
    assert "m-0" not in cache and "m-1" not in cache
    assert all(f"m-{i}" in cache for i in (2, 3, 4))


def test_the_defaults_remember_an_id_for_an_hour_and_hold_100000_ids():
    clock = Clock()
    clock.advance(1_000_000)
    cache = DedupCache(clock)
    assert cache.reserve("m-0")
    clock.advance(3599.9)
    assert not cache.reserve("m-0")
    clock.advance(0.1)
    assert cache.reserve("m-0")
    for i in range(1, 100_001):
        cache.reserve(f"m-{i}")
    assert len(cache) == 100_000
    assert "m-0" not in cache and "m-1" in cache


@pytest.mark.parametrize(("ttl", "max_entries"), [(0, 10), (-1, 10), (10, 0), (10, -1)])
def test_a_ttl_or_size_that_is_not_positive_is_refused(ttl, max_entries):
    with pytest.raises(ValueError, match="must be positive"):
        DedupCache(Clock(), ttl=ttl, max_entries=max_entries)


def test_a_ttl_under_a_second_and_a_single_entry_are_accepted():
    clock = Clock()
    cache = DedupCache(clock, ttl=0.5, max_entries=1)
    assert cache.reserve("m")
    clock.advance(0.5)
    assert cache.reserve("m")
    assert DedupCache(clock, ttl=1, max_entries=1).reserve("m")


def test_a_remembered_id_keeps_its_latest_acceptance_time():
    clock, cache = make(ttl=100)
    now = clock.seconds()
    cache.remember("m", now - 10)
    cache.remember("m", now - 50)  # an older acceptance found later must not shorten it
    clock.advance(85)
    assert "m" in cache
    assert not cache.reserve("m")


def test_an_id_seen_again_becomes_the_youngest_for_eviction():
    clock, cache = make(ttl=100, max_entries=2)
    now = clock.seconds()
    cache.remember("a", now - 50)
    cache.remember("b", now - 40)
    cache.remember("a", now - 10)  # now younger than b
    assert cache.reserve("c")  # over the bound: the oldest, b, goes
    assert "a" in cache and "c" in cache
    assert "b" not in cache


def test_remembering_an_expired_id_does_not_push_a_live_one_out():
    clock, cache = make(ttl=100, max_entries=2)
    assert cache.reserve("a")
    assert cache.reserve("b")
    cache.remember("old", clock.seconds() - 100)
    assert "a" in cache and "b" in cache
    assert "old" not in cache


class _Id(str):
    """A MessageId that can be watched with a weak reference: dead once the cache lets go of it."""


def test_a_reserve_lets_go_of_expired_ids_without_waiting_for_the_bound():
    clock, cache = make(ttl=10, max_entries=100)
    watched = weakref.ref(message_id := _Id("m-0"))
    assert cache.reserve(message_id)
    del message_id
    gc.collect()
    assert watched() is not None  # the cache holds it while it is live
    clock.advance(10)
    assert cache.reserve("m-1")
    gc.collect()
    assert watched() is None


def test_expired_entries_are_dropped_from_memory():
    clock, cache = make(ttl=10)
    for i in range(50):
        cache.reserve(f"m-{i}")
    assert len(cache) == 50
    clock.advance(10)
    assert len(cache) == 0


# -- AcceptedIds: the memory and the spool behind one interface ----------------------------


def accepted_ids(clock):
    from snsd.spool import SQLiteSpool
    from snsd.trust.dedup import AcceptedIds
    from tests.trust_helpers import result_of

    spool = SQLiteSpool(None, ":memory:", clock=clock, inline=True)
    result_of(spool.open())
    return spool, AcceptedIds(DedupCache(clock, ttl=600), spool)


def spooled_message(message_id):
    from snsd.records import parse_s3_message
    from tests.trust_helpers import envelope, notification
    from tests.web_harness import s3_message

    env = envelope(notification(s3_message("a.csv"), message_id=message_id))
    return env, parse_s3_message(env.message).records


def test_forget_lets_a_recorded_message_in_again_in_memory_and_in_the_spool():
    from tests.trust_helpers import result_of

    clock = Clock()
    clock.advance(1_000_000)
    spool, ids = accepted_ids(clock)
    env, records = spooled_message("m-1")
    assert ids.reserve("m-1")
    assert result_of(spool.add(env, records))
    assert not ids.reserve("m-1")
    ids.release("m-1")
    assert result_of(spool.add(env, records)) is None  # release: the memory only
    ids.forget("m-1")
    assert "m-1" not in ids
    assert ids.reserve("m-1")
    assert result_of(spool.add(env, records))  # forget: the spool too


def test_release_and_forget_each_let_the_retry_through_the_memory():
    from tests.trust_helpers import result_of

    clock = Clock()
    clock.advance(1_000_000)
    spool, ids = accepted_ids(clock)
    assert ids.reserve("m-1")
    ids.release("m-1")
    assert "m-1" not in ids
    assert ids.reserve("m-1")
    env, records = spooled_message("m-2")
    assert ids.reserve("m-2")
    assert result_of(spool.add(env, records))
    ids.forget("m-2")
    assert "m-2" not in ids
    assert ids.reserve("m-2")


def test_a_spool_that_cannot_forget_is_logged_and_the_memory_forgets_anyway():
    from twisted.logger import globalLogPublisher

    from tests.trust_helpers import result_of

    clock = Clock()
    clock.advance(1_000_000)
    spool, ids = accepted_ids(clock)
    assert ids.reserve("m-1")
    result_of(spool.close())
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        ids.forget("m-1")
    finally:
        globalLogPublisher.removeObserver(events.append)
    [event] = [e for e in events if "log_failure" in e]
    assert event["message_id"] == "m-1"
    assert event["log_failure"].check(RuntimeError)
    assert "read as a duplicate" in event["log_format"]
    assert ids.reserve("m-1")


def test_ids_found_at_startup_are_duplicates_for_the_rest_of_their_ttl():
    clock = Clock()
    clock.advance(1_000_000)
    _, ids = accepted_ids(clock)
    ids.load((("old", clock.seconds() - 600), ("recent", clock.seconds() - 10)))
    assert "old" not in ids and "recent" in ids
    assert not ids.reserve("recent")


def test_an_id_reserved_until_a_later_time_is_remembered_until_then():
    clock, cache = make(ttl=10)
    assert cache.reserve("m", until=clock.seconds() + 25)
    clock.advance(24.9)
    assert not cache.reserve("m")
    clock.advance(0.1)
    assert cache.reserve("m")


def test_a_message_stamped_ahead_is_remembered_until_its_timestamp_plus_max_age_and_skew():
    from datetime import timedelta

    from snsd.trust.verifier import MAX_FUTURE_SKEW
    from tests.trust_helpers import NOW, envelope, notification

    clock = Clock()
    clock.advance(NOW.timestamp())
    _, ids = accepted_ids(clock)  # TTL 600
    ids = type(ids)(ids.memory, None, max_age=600)
    ahead = envelope(notification(timestamp=NOW + timedelta(seconds=100)))
    assert ids.until(ahead) == NOW.timestamp() + 100 + 600 + MAX_FUTURE_SKEW
    behind = envelope(notification(timestamp=NOW - timedelta(seconds=400)))
    assert ids.until(behind) == NOW.timestamp() + 600  # the TTL from acceptance is longer


def test_a_raw_delivery_is_remembered_for_the_ttl_from_acceptance():
    from snsd.envelope import raw_delivery_envelope
    from tests.trust_helpers import TOPIC

    clock = Clock()
    clock.advance(1_000_000)
    _, ids = accepted_ids(clock)  # TTL 600
    raw = raw_delivery_envelope(b"hello", "m-1", TOPIC)
    assert raw.timestamp == ""  # nothing signed: no Timestamp to go by
    assert ids.until(raw) == clock.seconds() + 600


def test_the_default_max_age_is_an_hour():
    from datetime import timedelta

    from snsd.trust.dedup import AcceptedIds
    from snsd.trust.verifier import MAX_FUTURE_SKEW
    from tests.trust_helpers import NOW, envelope, notification

    clock = Clock()
    clock.advance(NOW.timestamp())
    ids = AcceptedIds(DedupCache(clock, ttl=600), None)
    ahead = envelope(notification(timestamp=NOW + timedelta(seconds=100)))
    assert ids.until(ahead) == NOW.timestamp() + 100 + 3600 + MAX_FUTURE_SKEW
