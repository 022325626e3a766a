"""Duplicate MessageIds, on a fake clock."""

from __future__ import annotations

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
