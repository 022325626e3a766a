"""The topic allow-list: wildcards stay inside one ARN field."""

from __future__ import annotations

import pytest

from snsd.trust.topics import TopicAllowList


def test_no_patterns_allows_every_topic():
    allow = TopicAllowList([])
    assert allow.open
    assert allow.allows("arn:aws:sns:us-east-1:123456789012:anything")
    assert TopicAllowList(["", "  "]).open


def test_exact_topic():
    allow = TopicAllowList(["arn:aws:sns:us-east-1:123456789012:uploads"])
    assert not allow.open
    assert allow.allows("arn:aws:sns:us-east-1:123456789012:uploads")
    assert not allow.allows("arn:aws:sns:us-east-1:123456789012:uploads2")
    assert not allow.allows("arn:aws:sns:us-east-1:123456789012:upload")
    assert not allow.allows("arn:aws:sns:us-east-1:999999999999:uploads")


def test_wildcards_within_fields():
    allow = TopicAllowList(["arn:aws:sns:*:123456789012:uploads-*"])
    assert allow.allows("arn:aws:sns:eu-west-1:123456789012:uploads-raw")
    assert allow.allows("arn:aws:sns:us-east-1:123456789012:uploads-")
    assert not allow.allows("arn:aws:sns:us-east-1:123456789012:downloads-raw")
    assert not allow.allows("arn:aws:sns:us-east-1:999999999999:uploads-raw")


def test_a_wildcard_never_spans_a_colon():
    allow = TopicAllowList(["arn:aws:sns:us-east-1:*:uploads"])
    assert allow.allows("arn:aws:sns:us-east-1:123456789012:uploads")
    assert not allow.allows("arn:aws:sns:us-east-1:123:456:uploads")
    assert not TopicAllowList(["arn:aws:sns:*:1:t*"]).allows("arn:aws:sns:us-east-1:1:t:extra")


def test_other_characters_are_literal():
    allow = TopicAllowList(["arn:aws:sns:us-east-1:1:up.loads?"])
    assert allow.allows("arn:aws:sns:us-east-1:1:up.loads?")
    assert not allow.allows("arn:aws:sns:us-east-1:1:upXloads")


def test_any_pattern_may_match():
    allow = TopicAllowList(["arn:aws:sns:us-east-1:1:a", " arn:aws:sns:us-east-1:1:b "])
    assert allow.allows("arn:aws:sns:us-east-1:1:b")
    assert allow.patterns == ("arn:aws:sns:us-east-1:1:a", "arn:aws:sns:us-east-1:1:b")


@pytest.mark.parametrize("pattern", ["*", "uploads", "arn:aws:sns:us-east-1:uploads", "x:aws:sns:r:1:t"])
def test_patterns_that_are_not_arns_are_configuration_errors(pattern):
    with pytest.raises(ValueError):
        TopicAllowList([pattern])


def test_answers_stay_right_and_memory_bounded_under_a_flood_of_invented_topics():
    from snsd.trust import topics

    allow = TopicAllowList(["arn:aws:sns:*:1:up-*"])
    for i in range(3 * topics._MEMO_MAX):
        assert allow.allows(f"arn:aws:sns:r:1:up-{i}")
        assert not allow.allows(f"arn:aws:sns:r:2:up-{i}")
    assert len(allow._memo) <= topics._MEMO_MAX
    assert allow.allows("arn:aws:sns:r:1:up-0") and not allow.allows("arn:aws:sns:r:2:up-0")


def test_up_to_1024_answers_are_remembered_then_the_memory_starts_over():
    allow = TopicAllowList(["arn:aws:sns:*:1:up-*"])
    for i in range(1024):
        allow.allows(f"arn:aws:sns:r:1:up-{i}")
    assert len(allow._memo) == 1024
    allow.allows("arn:aws:sns:r:1:up-1024")
    assert len(allow._memo) == 1
