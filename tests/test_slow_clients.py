"""Slow clients cannot hold every file descriptor (issue 15 item 6), shown on the real twistd process.

snsd runs with its descriptor limit lowered to 256.  Three hundred clients open connections and
send their requests a byte at a time; meanwhile the health check and SNS POSTs, made on new
connections, must keep being answered, and the slow clients must be cut off (408 at the request
deadline, or closed at the connection cap to make room).
"""

from __future__ import annotations

import errno
import json
import selectors
import socket
import time
import uuid

import pytest

from tests.process_helpers import Daemon, notification
from tests.web_harness import s3_message

SLOW_CLIENTS = 300
DESCRIPTORS = 256
DEADLINE = 3.0
ROUNDS = 16  # one health check and one SNS POST per round, a round every 0.5 s: about 8 s in all
TRICKLE = b"POST / HTTP/1.1\r\nHost: snsd\r\nContent-Type: text/plain\r\nContent-Length: 400\r\n\r\n" + b"{" * 400


class SlowClients:
    """Connections that send their request one byte per ``step``, and notice when snsd closes them."""

    def __init__(self, port: int, count: int):
        self.selector = selectors.DefaultSelector()
        self.sent: dict[socket.socket, int] = {}
        self.got_408 = 0
        self.cut_off = 0
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            code = sock.connect_ex(("127.0.0.1", port))
            assert code in (0, errno.EINPROGRESS), code
            self.sent[sock] = 0
            self.selector.register(sock, selectors.EVENT_READ)

    def step(self) -> None:
        """One more byte from each client still connected, then collect what snsd closed."""
        for sock, sent in list(self.sent.items()):
            try:
                if sent < len(TRICKLE):
                    sock.send(TRICKLE[sent : sent + 1])
                    self.sent[sock] = sent + 1
            except (BlockingIOError, InterruptedError):
                pass  # not connected yet (still in snsd's backlog): try again next step
            except OSError:
                self._cut(sock, b"")
        for key, _ in self.selector.select(timeout=0):
            sock = key.fileobj
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data or data.startswith(b"HTTP/1.1 408"):
                self._cut(sock, data)

    def _cut(self, sock: socket.socket, data: bytes) -> None:
        if sock not in self.sent:
            return
        self.got_408 += data.startswith(b"HTTP/1.1 408")
        self.cut_off += 1
        del self.sent[sock]
        self.selector.unregister(sock)
        sock.close()

    def close(self) -> None:
        for sock in list(self.sent):
            self.selector.unregister(sock)
            sock.close()
        self.selector.close()


@pytest.mark.process
def test_with_256_descriptors_slow_clients_are_cut_off_while_health_and_sns_posts_keep_working(tmp_path):
    daemon = Daemon(
        tmp_path,
        "--no-verify-signatures",
        "--job",
        "snsd_test_jobs:echo",
        "--request-deadline",
        str(DEADLINE),
        nofile=DESCRIPTORS,
    ).start()
    slow = SlowClients(daemon.port, SLOW_CLIENTS)
    health, posts = [], []
    try:
        started = time.monotonic()
        for round_ in range(ROUNDS):
            slow.step()
            health.append(daemon.get("/healthz")[0])
            body = notification(s3_message(f"slow/{round_}.csv"), str(uuid.uuid4()))
            status, answer, _ = daemon.post(body)
            posts.append((status, json.loads(answer).get("status") if answer else None))
            slow.step()
            time.sleep(max(0.0, started + 0.5 * (round_ + 1) - time.monotonic()))
        slow.step()
        elapsed = time.monotonic() - started
    finally:
        slow.close()
        code = daemon.stop()
    assert health == [200] * ROUNDS, daemon.output()[-3000:]
    assert posts == [(200, "accepted")] * ROUNDS, daemon.output()[-3000:]
    assert {line["key"] for line in daemon.result_lines()} == {f"slow/{i}.csv" for i in range(ROUNDS)}
    # Every slow client was cut off within the run, whatever it kept sending; some at the deadline.
    assert slow.cut_off == SLOW_CLIENTS, (slow.cut_off, elapsed)
    assert slow.got_408 > 0
    assert "Out of file descriptors" not in daemon.output() and "Too many open files" not in daemon.output()
    assert code == 0
