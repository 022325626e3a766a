"""An in-memory SQS queue for the forwarder's and the worker's tests, on a ``Clock``.

It keeps the semantics those two rely on: visibility timeouts, ApproximateReceiveCount, a new
receipt handle per receive, a long poll that waits on the clock (or ends when a message
arrives), a redrive to a dead-letter queue after ``max_receive_count`` receives, batch limits,
and an outage switch (``down``) under which every call fails.  The real SQS runs in the
LocalStack tests (tests/test_sqs_localstack.py).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from twisted.internet.defer import Deferred, fail, succeed

from snsd.sqs.queue import BATCH, QueueMessage, SendResult


class Unreachable(ConnectionError):
    pass


@dataclass
class _Stored:
    message_id: str
    body: str
    visible_at: float = 0.0
    receive_count: int = 0
    receipt: str | None = None


class MemoryQueue:
    def __init__(self, clock, url: str = "memory://queue", max_receive_count: int | None = None, dlq=None):
        self.clock = clock
        self.url = url
        self.max_receive_count = max_receive_count
        self.dlq = dlq
        self.down = False
        self.hang = False  # receives never answer
        self.refuse_ids: set[str] = set()  # send_batch entry ids to report as failed
        self.messages: dict[str, _Stored] = {}
        self.calls: list[str] = []
        self._ids = itertools.count(1)
        self._waiting: list[tuple[Deferred, int, int | None, object]] = []

    # -- what tests look at -------------------------------------------------------------------

    def bodies(self) -> list[str]:
        return [m.body for m in self.messages.values()]

    def visible(self) -> list[_Stored]:
        now = self.clock.seconds()
        return [m for m in self.messages.values() if m.visible_at <= now]

    def asked(self) -> list[int]:
        """How many messages each long poll now waiting asked for."""
        return [limit for _, limit, _, _ in self._waiting]

    def put(self, body: str) -> str:
        message_id = f"m-{next(self._ids)}"
        self.messages[message_id] = _Stored(message_id, body, self.clock.seconds())
        self._wake()
        return message_id

    # -- the queue's calls --------------------------------------------------------------------

    def _call(self, name: str):
        self.calls.append(name)
        if self.down:
            return Unreachable(f"{self.url} unreachable")
        return None

    def send_batch(self, entries):
        error = self._call("send_batch")
        if error:
            return fail(error)
        assert 0 < len(entries) <= BATCH, len(entries)
        sent, failed = [], {}
        for entry_id, body in entries:
            if entry_id in self.refuse_ids:
                failed[entry_id] = "InternalError: refused by the test"
            else:
                self.put(body)
                sent.append(entry_id)
        return succeed(SendResult(tuple(sent), failed))

    def receive(self, max_messages: int, wait: int = 20, visibility: int | None = 30):
        error = self._call("receive")
        if error:
            return fail(error)
        assert 1 <= max_messages <= BATCH, max_messages
        if self.hang:
            return Deferred()
        got = self._take(max_messages, visibility)
        if got or wait == 0:
            return succeed(got)
        d = Deferred()
        timer = self.clock.callLater(wait, self._expire, d, max_messages, visibility)
        self._waiting.append((d, max_messages, visibility, timer))
        return d

    def delete(self, receipt_handles):
        error = self._call("delete")
        if error:
            return fail(error)
        assert 0 < len(receipt_handles) <= BATCH, len(receipt_handles)
        handles = set(receipt_handles)
        for message_id, stored in list(self.messages.items()):
            if stored.receipt in handles:
                del self.messages[message_id]
        return succeed([])

    def change_visibility(self, receipt_handles, seconds: int):
        error = self._call("change_visibility")
        if error:
            return fail(error)
        handles = set(receipt_handles)
        for stored in self.messages.values():
            if stored.receipt in handles:
                stored.visible_at = self.clock.seconds() + seconds
        self._wake()
        return succeed(None)

    def depth(self):
        error = self._call("depth")
        if error:
            return fail(error)
        return succeed(len(self.visible()))

    # -- inside ---------------------------------------------------------------------------------

    def _take(self, limit: int, visibility: int | None) -> list[QueueMessage]:
        got = []
        for stored in self.visible():
            if len(got) == limit:
                break
            if self.max_receive_count is not None and stored.receive_count >= self.max_receive_count:
                del self.messages[stored.message_id]  # the redrive policy: off to the dead letters
                self.dlq.put(stored.body)
                continue
            stored.receive_count += 1
            stored.receipt = f"{stored.message_id}#{stored.receive_count}"
            stored.visible_at = self.clock.seconds() + (30 if visibility is None else visibility)
            got.append(QueueMessage(stored.message_id, stored.receipt, stored.body, stored.receive_count))
        return got

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, []
        for d, limit, visibility, timer in waiting:
            got = self._take(limit, visibility)
            if got:
                timer.cancel()
                d.callback(got)
            else:
                self._waiting.append((d, limit, visibility, timer))

    def _expire(self, d: Deferred, limit: int, visibility: int | None) -> None:
        self._waiting = [w for w in self._waiting if w[0] is not d]
        # Messages that became visible since (their timeout lapsed) are found at the end of the wait.
        d.callback(self._take(limit, visibility))
