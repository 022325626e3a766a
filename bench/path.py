"""The whole request path in one process, without sockets: CPU per request, by thread.

Builds the daemon as ``twistd snsd`` does (signatures verified against a loopback certificate
server, cached after the first message; durable SQLite spool; a trivial job) and feeds its Site
C keep-alive connections' worth of signed Notifications through in-memory transports, each
connection sending its next request on the reactor turn after its answer is complete.  It
prints the reactor thread's CPU per request and every other thread's, then the wall time.

No load generator and no second process share the cores, so a figure varies by about 5-10 %
from run to run where bench/load.py varies by 15-25 %: the tool for a first look at a change to
the path, before alternating A/B rounds over real sockets confirm it.

    python bench/path.py [-c 32] [-n 6000] [-- extra snsd options]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _common import JOBS_SOURCE, TOPIC, CertServer, notifications, response_length, stat_cpu  # noqa: E402
from twisted.internet import defer, reactor, task  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

WARMUP = 500


def request(body: bytes) -> bytes:
    return (
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain; charset=UTF-8\r\n"
        b"x-amz-sns-message-type: Notification\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of each live thread, by name."""
    cpu = {}
    for thread in threading.enumerate():
        try:
            cpu[thread.name] = stat_cpu(Path(f"/proc/self/task/{thread.native_id}/stat"))
        except OSError:
            continue  # the thread ended meanwhile
    return cpu


class Connections:
    """C in-memory keep-alive connections to the Site, each a closed loop of requests."""

    def __init__(self, site, count: int):
        self.pairs = []
        for i in range(count):
            peer = IPv4Address("TCP", "127.0.0.1", 40000 + i)
            channel = site.buildProtocol(peer)
            transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 8080), peerAddress=peer)
            channel.makeConnection(transport)
            self.pairs.append((channel, transport))

    def run(self, bodies) -> defer.Deferred:
        """Send every body; fires once each has its answer (every one must be a 200)."""
        pending = iter(bodies)
        finished = defer.Deferred()
        open_connections = [len(self.pairs)]

        def send(channel, transport):
            body = next(pending, None)
            if body is None:
                open_connections[0] -= 1
                if open_connections[0] == 0:
                    finished.callback(None)
                return
            transport.clear()
            channel.dataReceived(request(body))

        for channel, transport in self.pairs:

            def write(data, channel=channel, transport=transport, write=transport.write):
                write(data)
                answer = transport.value()
                if response_length(answer) is not None:
                    if not answer.startswith(b"HTTP/1.1 200"):
                        raise SystemExit(f"not a 200: {answer[:300]!r}")
                    reactor.callLater(0, send, channel, transport)  # the next request, a turn later

            transport.write = write
            reactor.callLater(0, send, channel, transport)
        return finished


async def settle(daemon) -> None:
    while daemon.dispatcher.pending or daemon.dispatcher.jobs_running:
        await task.deferLater(reactor, 0.0005, lambda: None)


async def main(args, extra) -> None:
    from snsd.config import SNSDOptions
    from snsd.daemon import build_daemon
    from snsd.logs import drop_levels_below, level_from_env

    cert = CertServer()
    bodies = notifications(WARMUP + args.n, "path", cert.key_pem, cert.cert_url)
    directory = Path(tempfile.mkdtemp(prefix="snsd-bench-path-"))
    (directory / "bench_jobs.py").write_text(JOBS_SOURCE)
    sys.path.insert(0, str(directory))
    options = SNSDOptions()
    options.parseOptions(
        [
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--admin-port",
            "tcp:0:interface=127.0.0.1",
            "--dry-run",
            "--results",
            str(directory / "results.jsonl"),
        ]
        + ["--spool", str(directory / "spool.sqlite3"), "--topic-arn", TOPIC, "--job", "bench_jobs:trivial"]
        + ["--trusted-host", cert.trusted_host, *extra]
    )
    drop_levels_below(level_from_env())  # as twistd's snsd does; nothing here logs to a file
    daemon = build_daemon(reactor, options.settings)
    daemon.startService()
    try:
        while not daemon.dispatcher.ready:
            await task.deferLater(reactor, 0.01, lambda: None)
        connections = Connections(daemon.http.factory, args.c)
        await connections.run(bodies[:WARMUP])
        await settle(daemon)
        before, wall = thread_cpu(), time.perf_counter()
        await connections.run(bodies[WARMUP:])
        await settle(daemon)
        after, wall = thread_cpu(), time.perf_counter() - wall
    finally:
        await daemon.stopService()
        cert.close()
    per_request = {name: 1e6 * (after[name] - before.get(name, 0.0)) / args.n for name in after}
    reactor_us = per_request.pop(threading.current_thread().name, 0.0)
    groups: dict[str, float] = {}
    for name, us in per_request.items():
        group = name.rsplit("-", 1)[0].removeprefix("PoolThread-")
        groups[group] = groups.get(group, 0.0) + us
    others = ", ".join(f"{group} {us:.0f}" for group, us in sorted(groups.items()) if us >= 0.5)
    print(
        f"path | c={args.c}: reactor {reactor_us:.0f} us/request; other threads: {others or 'none'}; "
        f"wall {1e6 * wall / args.n:.0f} us/request ({args.n / wall:.0f} req/s)",
        flush=True,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", type=int, default=32, help="concurrent connections (default 32)")
    parser.add_argument("-n", type=int, default=6000, help="requests measured (default 6000)")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    parsed = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    task.react(lambda _reactor: defer.ensureDeferred(main(parsed, extra)))
