"""A burst: 20,000 notifications as fast as possible, 50 ms jobs, 10 workers, for snsd and the
baseline.  Prints accepted, 503s, results, dead letters, lost (accepted - results - dead
letters), duplicates, the listener's peak RSS and the time from the last answer until the
last result (drain).

snsd verifies every signature and spools to SQLite with its default --max-pending (10,000):
past it, it answers 503 so SNS retries later.  The baseline queues everything in memory.

    python bench/burst.py [-n 20000]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    CertServer,
    notifications,
    result_lines,
    run_load,
    start_baseline,
    start_snsd,
    workdir,
)


def dead_letters(spool: Path) -> int:
    if not spool.exists():
        return 0
    with sqlite3.connect(spool) as conn:
        return conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]


def burst(name, listener, bodies, concurrency, generators, quiet_seconds=15.0):
    results_path = listener.workdir / "results.jsonl"
    try:
        load = run_load(listener.port, bodies, concurrency, generators, listener.process.pid)
        sent_done = time.monotonic()
        accepted = load.statuses.get(200, 0)
        last_count, last_change = -1, time.monotonic()
        while True:
            count = len(result_lines(results_path))
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            if count >= accepted or time.monotonic() - last_change > quiet_seconds:
                break
            time.sleep(0.25)
        drain = last_change - sent_done if count < accepted else time.monotonic() - sent_done
        _, peak = listener.rss_mb()
    finally:
        listener.stop(timeout=120)
    lines = result_lines(results_path)
    dead = dead_letters(listener.workdir / "spool.sqlite3")
    seen = Counter((line["message_id"], line["key"]) for line in lines)
    figures = {
        "accepted": accepted,
        "503s": load.statuses.get(503, 0),
        "other": {k: v for k, v in load.statuses.items() if k not in (200, 503)},
        "results": len(seen),
        "dead_letters": dead,
        "lost": accepted - len(seen) - dead,
        "duplicates": sum(n - 1 for n in seen.values()),
        "peak_rss_mb": round(peak, 1),
        "send_s": round(load.seconds, 1),
        "drain_s": round(drain, 1),
    }
    print(f"  {name:8s} {figures}", flush=True)
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("-c", type=int, default=32, help="connections (default 32)")
    parser.add_argument("--generators", type=int, default=2)
    args = parser.parse_args(argv)
    cert = CertServer()
    print(f"signing {args.n} notifications...", flush=True)
    bodies = notifications(args.n, "burst", cert.key_pem, cert.cert_url)
    env = {"SNS_WORKER_MAX": "10"}
    s = burst(
        "snsd",
        start_snsd(workdir("burst-snsd"), "--workers", "10", trusted_host=cert.trusted_host, job="bench_jobs:sleep50"),
        bodies,
        args.c,
        args.generators,
    )
    b = burst("baseline", start_baseline(workdir("burst-base"), job="bench_jobs:sleep50", env=env), bodies, args.c,
              args.generators)  # fmt: skip
    cert.close()
    print(
        "burst | "
        + " | ".join(
            f"{name}: accepted {f['accepted']}, 503 {f['503s']}, results {f['results']}, dead {f['dead_letters']}, "
            f"lost {f['lost']}, dup {f['duplicates']}, peak RSS {f['peak_rss_mb']} MB, drain {f['drain_s']} s"
            for name, f in (("snsd", s), ("baseline", b))
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
