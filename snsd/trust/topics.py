"""The topic allow-list: which TopicArns snsd accepts messages from.

Patterns are ARNs (``arn:<partition>:sns:<region>:<account>:<name>``) in which ``*`` matches
any run of characters *within one colon-separated field*, so ``arn:aws:sns:*:123456789012:up-*``
cannot be stretched across fields by a topic name containing colons.  No other character is
special.  An empty list allows every topic (``open`` is then true, and the daemon says so at
startup).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_ARN_FIELDS = 6
# Answers remembered per topic; bounded because a sender can make up any number of topic names.
_MEMO_MAX = 1024


def _compile(pattern: str) -> re.Pattern[str]:
    fields = pattern.split(":")
    if len(fields) != _ARN_FIELDS or fields[0] != "arn":
        raise ValueError(f"topic pattern {pattern!r} is not an ARN (arn:partition:sns:region:account:name)")
    return re.compile(":".join("[^:]*".join(re.escape(part) for part in field.split("*")) for field in fields))


class TopicAllowList:
    def __init__(self, patterns: Iterable[str] = ()) -> None:
        cleaned = tuple(p.strip() for p in patterns if p.strip())
        self._patterns = cleaned
        self._compiled = tuple(_compile(p) for p in cleaned)
        self._memo: dict[str, bool] = {}

    @property
    def open(self) -> bool:
        """True when no pattern was given: every topic is allowed."""
        return not self._compiled

    @property
    def patterns(self) -> tuple[str, ...]:
        return self._patterns

    def allows(self, topic_arn: str) -> bool:
        # Asked for every message, and deliveries come from a handful of topics.
        answer = self._memo.get(topic_arn)
        if answer is None:
            answer = self.open or any(p.fullmatch(topic_arn) for p in self._compiled)
            if len(self._memo) >= _MEMO_MAX:
                self._memo.clear()
            self._memo[topic_arn] = answer
        return answer
