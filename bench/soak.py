"""A soak: signed notifications at a steady rate for N minutes against one snsd, to see what a
long run costs.  Every ``--sample`` seconds it prints the daemon's RSS, the spool's size (the
database and its WAL), the ids the spool remembers, the answers and the results so far.  At the
end: every MessageId answered 200 against the result lines (lost = answered 200 without a
result or a dead letter), the spool's bytes per remembered id, and how flat RSS stayed over the
last half of the run.

The sender is an open loop: request i is due at i / rate seconds, whatever the answers before
it took, on ``-c`` keep-alive connections, each notification signed as it is sent (so a run of
any length holds no backlog of bodies; the certificate has a 1024-bit key, which signs several
times faster than 2048).  Once it is a second behind (a busy machine), the sender moves its
schedule on rather than catch up in a burst; "slipped" says by how much in all, and the achieved
rate is then below the one asked for.  snsd runs with a durable spool, verified signatures, the trivial job, 4 workers.

    python bench/soak.py [--rate 300] [--minutes 10] [--sample 15] [--dedup-ttl 3600] [-c 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sqlite3
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import TOPIC, CertServer, ResultCounter, request_bytes, response_length, s3_event, start_snsd, workdir  # noqa: E402,I001


# -- the sender (a process of its own) ---------------------------------------------------------

MAX_LAG = 1.0  # seconds behind the schedule before it is moved on


def _sender(port, rate, seconds, connections, key_pem, cert_url, answered, pipe) -> None:
    from snsd.tools.post import build_notification

    prefix = uuid.uuid4().hex[:8]
    statuses: dict = {}
    accepted: list[str] = []  # MessageIds answered 200
    latencies: list[float] = []
    slipped = 0.0  # seconds the schedule was moved on because the sender could not keep up

    async def connection(next_index):
        nonlocal t0, slipped
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        loop = asyncio.get_running_loop()
        try:
            while True:
                i = next(next_index)
                now = loop.time()
                if now >= end:
                    return
                wait = t0 + i / rate - now
                if wait > 0:
                    await asyncio.sleep(wait)
                elif wait < -MAX_LAG:
                    # Behind (a busy machine): move the schedule on rather than catch up in a
                    # burst, which would measure a burst, not a steady rate.
                    t0 -= wait
                    slipped -= wait
                message_id = f"soak-{prefix}-{i}-{uuid.uuid4()}"
                fields = build_notification(
                    s3_event(f"soak/{i:08d}.csv"), TOPIC, message_id=message_id, sign_key_pem=key_pem, cert_url=cert_url
                )
                sent = loop.time()
                writer.write(request_bytes(json.dumps(fields).encode()))
                buffer = b""
                while response_length(buffer) is None:
                    data = await reader.read(65536)
                    if not data:
                        statuses["dropped"] = statuses.get("dropped", 0) + 1
                        return
                    buffer += data
                latencies.append(loop.time() - sent)
                status = int(buffer[9:12])
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    accepted.append(message_id)
                with answered.get_lock():
                    answered.value += 1
        finally:
            writer.close()

    async def run():
        nonlocal t0, end
        t0 = asyncio.get_running_loop().time()
        end = t0 + seconds
        indexes = iter(range(10**12))
        await asyncio.gather(*(connection(indexes) for _ in range(connections)))

    t0 = end = 0.0
    asyncio.run(run())
    latencies.sort()
    pick = [latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 for q in (0.5, 0.99, 0.999, 1.0)]
    pipe.send((statuses, accepted, slipped, pick))
    pipe.close()


# -- measurements --------------------------------------------------------------------------------


def spool_bytes(spool: Path) -> tuple[int, int]:
    """(database, WAL) sizes in bytes."""
    wal = spool.with_name(spool.name + "-wal")
    return (spool.stat().st_size if spool.exists() else 0), (wal.stat().st_size if wal.exists() else 0)


def query(spool: Path, sql: str):
    conn = sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def results_by_message(path: Path) -> tuple[set[str], int]:
    """(distinct MessageIds with a result line, result lines)."""
    ids, lines = set(), 0
    with open(path, "rb") as f:
        for line in f:
            try:
                ids.add(json.loads(line)["message_id"])
                lines += 1
            except ValueError:
                pass  # a line being written
    return ids, lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=300.0, help="notifications per second (default 300)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--sample", type=float, default=15.0, help="seconds between samples (default 15)")
    parser.add_argument("--dedup-ttl", type=float, default=3600.0, help="snsd's --dedup-ttl (default 3600)")
    parser.add_argument("-c", type=int, default=8, help="connections (default 8)")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    seconds = args.minutes * 60

    cert = CertServer(key_size=1024)
    ttl = f"{args.dedup_ttl:g}"
    listener = start_snsd(
        workdir("soak"),
        "--workers", str(args.workers), "--dedup-ttl", ttl, "--max-age", f"{min(args.dedup_ttl, 3600.0):g}",
        trusted_host=cert.trusted_host,
    )  # fmt: skip
    spool = listener.workdir / "spool.sqlite3"
    results = ResultCounter(listener.workdir / "results.jsonl")
    print(f"snsd pid {listener.process.pid}, workdir {listener.workdir}", flush=True)
    print(f"{args.rate:g}/s for {args.minutes:g} min, --dedup-ttl {ttl}, {args.c} connections", flush=True)

    ctx = multiprocessing.get_context("fork")
    answered = ctx.Value("q", 0)
    parent, child = ctx.Pipe(duplex=False)
    sender = ctx.Process(
        target=_sender, args=(listener.port, args.rate, seconds, args.c, cert.key_pem, cert.cert_url, answered, child)
    )
    samples = []  # (t, rss MB, db bytes, wal bytes, remembered, answered, results)
    print("     t  rss MB  spool MB  wal MB  remembered  answered  results", flush=True)

    def sample(t0):
        t = time.monotonic() - t0
        rss, _ = listener.rss_mb()
        db, wal = spool_bytes(spool)
        ((remembered,),) = query(spool, "SELECT COUNT(*) FROM messages")
        row = (t, rss, db, wal, remembered, answered.value, results.count())
        samples.append(row)
        print(
            f"{t:6.0f}  {rss:6.1f}  {db / 1e6:8.2f}  {wal / 1e6:6.2f}  {remembered:10d}  {row[5]:8d}  {row[6]:7d}",
            flush=True,
        )

    try:
        t0 = time.monotonic()
        sender.start()
        sample(t0)
        # Until the sender reports (its report may be larger than a pipe holds: it waits for us).
        while not parent.poll(max(0.0, args.sample - (time.monotonic() - t0 - samples[-1][0]))):
            sample(t0)
        statuses, accepted, slipped, latency = parent.recv()
        sender.join()
        # The last results: every accepted record should have one shortly.
        deadline = time.monotonic() + 60
        while results.count() < len(accepted) and time.monotonic() < deadline:
            time.sleep(0.5)
        sample(t0)
        _, peak = listener.rss_mb()
    finally:
        listener.stop(timeout=120)
        cert.close()

    got, lines = results_by_message(listener.workdir / "results.jsonl")
    dead = {m for (m,) in query(spool, "SELECT message_id FROM dead_letters")}
    lost = len(set(accepted) - got - dead)
    _, _, db, wal, remembered, *_ = samples[-1]
    late = [s for s in samples if seconds / 2 <= s[0] <= seconds + args.sample] or samples[-1:]  # sending's last half
    rss_low, rss_high = min(s[1] for s in late), max(s[1] for s in late)
    sent_rate = sum(statuses.values()) / seconds
    print(
        f"soak | {args.rate:g}/s x {args.minutes:g} min (achieved {sent_rate:.0f}/s; slipped {slipped:.0f} s),"
        f" --dedup-ttl {ttl}: answers {statuses}"
        f" (p50 {latency[0]:.1f} ms, p99 {latency[1]:.1f}, p99.9 {latency[2]:.1f}, max {latency[3]:.1f});"
        f" results {len(got)} ({lines - len(got)} duplicate lines),"
        f" dead letters {len(dead)}, lost {lost};"
        f" spool {db / 1e6:.1f} MB + WAL {wal / 1e6:.1f} MB for {remembered} remembered ids:"
        f" {db / max(remembered, 1):.0f} B/id ({(db + wal) / max(remembered, 1):.0f} with the WAL);"
        f" RSS first {samples[0][1]:.1f} MB, last half {rss_low:.1f}-{rss_high:.1f} MB"
        f" ({100 * (rss_high - rss_low) / rss_low:.1f} % spread), peak {peak:.1f} MB",
        flush=True,
    )
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
