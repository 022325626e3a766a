"""The dispatcher and spool alone: reactor-thread CPU per record, without HTTP or signatures.

Drives the real Dispatcher, SQLiteSpool (a file in a temporary directory), WorkerPool and
JSON-lines sink in this process: each reactor turn accepts K messages (one record each) and
waits for them to be spooled, as K concurrent requests would; then it waits for every job.
Run with ``--no-jobs`` to measure accepting and spooling alone, so the difference is what
running the jobs costs the reactor.  The measurement bench/load.py cannot isolate, and fast to
repeat (seconds) while changing the dispatcher.

    python bench/dispatch.py [-k 2] [-n 12000] [--no-jobs]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, reactor, task  # noqa: E402
from twisted.logger import LogLevel  # noqa: E402

from snsd import logs  # noqa: E402
from snsd.breaker import CircuitBreaker  # noqa: E402
from snsd.dispatcher import Dispatcher  # noqa: E402
from snsd.envelope import parse_envelope  # noqa: E402
from snsd.pool import WorkerPool  # noqa: E402
from snsd.records import parse_s3_message  # noqa: E402
from snsd.sinks import JSONLinesSink  # noqa: E402
from snsd.spool import SQLiteSpool  # noqa: E402

WARMUP = 2000


def message(i: int):
    event = {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventName": "ObjectCreated:Put",
                "eventTime": "2026-11-29T10:00:00.000Z",
                "s3": {"bucket": {"name": "bench"}, "object": {"key": f"k/{i}.csv", "size": 10, "eTag": "e"}},
            }
        ]
    }
    body = json.dumps(
        {
            "Type": "Notification",
            "MessageId": f"{i:08d}-0000-4000-8000-000000000000",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:bench",
            "Message": json.dumps(event),
            "Timestamp": "2026-11-29T10:00:00.000Z",
            "SignatureVersion": "1",
            "Signature": "x" * 344,  # the size of a real one; nothing here checks it
            "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0.pem",
        }
    ).encode()
    envelope = parse_envelope(body)
    return envelope, parse_s3_message(envelope.message, envelope.message_id, envelope.topic_arn).records


async def drive(dispatcher: Dispatcher, messages, k: int, jobs: bool) -> None:
    for i in range(0, len(messages), k):
        await defer.gatherResults([dispatcher.accept(*m) for m in messages[i : i + k]])
    while dispatcher.jobs_running or (jobs and dispatcher.pending):
        await task.deferLater(reactor, 0.0005, lambda: None)


async def main(args) -> None:
    logs.drop_levels_below(LogLevel.info)  # as the daemon runs: per-record debug lines are skipped
    directory = Path(tempfile.mkdtemp(prefix="snsd-bench-dispatch-"))
    spool = SQLiteSpool(reactor, str(directory / "spool.sqlite3"))
    pool = WorkerPool(reactor, 10, nice=19)
    sink = JSONLinesSink(str(directory / "results.jsonl"))
    dispatcher = Dispatcher(
        spool, pool, CircuitBreaker(reactor), lambda record: {"verdict": "pass"}, sink, reactor,
        workers=10, max_pending=10**9,
    )  # fmt: skip
    messages = [message(i) for i in range(WARMUP + args.n)]
    pool.startService()
    dispatcher.start(await spool.open())
    if args.no_jobs:
        dispatcher._pump = lambda: None
    await drive(dispatcher, messages[:WARMUP], args.k, not args.no_jobs)
    cpu, wall, commits = time.thread_time(), time.perf_counter(), spool.commits
    await drive(dispatcher, messages[WARMUP:], args.k, not args.no_jobs)
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    pool.stopService()
    await spool.close()
    sink.close()
    print(
        f"dispatch | {'no jobs' if args.no_jobs else 'jobs'}, {args.k} per turn: reactor thread "
        f"{1e6 * cpu / args.n:.1f} us/record, wall {1e6 * wall / args.n:.1f} us/record, "
        f"{(spool.commits - commits) / args.n:.2f} commits/record",
        flush=True,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-k", type=int, default=2, help="messages accepted per reactor turn (default 2)")
    parser.add_argument("-n", type=int, default=12000, help="messages measured (default 12000)")
    parser.add_argument("--no-jobs", action="store_true", help="accept and spool only")
    args = parser.parse_args()
    task.react(lambda _reactor: defer.ensureDeferred(main(args)))
