"""Notification ingest: requests/s and p50/p99 latency at concurrency 4 and 32, keep-alive.

Four listeners, one after another, in one run: snsd (signatures verified against a loopback
certificate server, cached after the first message; durable SQLite spool; a trivial job), the
stdlib baseline (no signatures, no spool), the bare-Klein floor on Twisted's default Site, and
the floor with the Site's form parsing off as snsd has it ("floor-nf": the stricter ceiling,
since the default Site spends ~70 us per POST parsing its Content-Type).  Every request carries a
distinct, really signed Notification.  The load generator is a closed loop of raw keep-alive
connections in 1 (c=4) or 2 (c=32) processes; its CPU use is printed next to the server's,
because on a 2-core machine both share the cores.

    python bench/load.py [-n 3000]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    CertServer,
    ResultCounter,
    notifications,
    run_load,
    start_baseline,
    start_floor,
    start_snsd,
    workdir,
)

LEVELS = (4, 32)


def measure(name, listener, bodies, n, warmup, processes_at, jobs=True):
    """Ingest rate and latency per level; for listeners that run jobs, also the sustained rate:
    the level's requests over the time from its first request to its last job's result line.
    A listener may answer faster than its jobs run (snsd's spool holds the difference), so the
    ingest rate alone can overstate what it keeps up with.  Each level starts with no backlog."""
    results = {}
    counter = ResultCounter(listener.workdir / "results.jsonl") if jobs else None
    try:
        run_load(listener.port, bodies[:warmup], 4, 1)
        offset = warmup
        for c in LEVELS:
            if counter:
                counter.wait_for(offset)
            result = run_load(listener.port, bodies[offset : offset + n], c, processes_at(c), listener.process.pid)
            offset += n
            line = f"  {name:8s} c={c:<3d} {result.describe()}"
            if counter:
                result.sustained = n / (counter.wait_for(offset) - result.started)
                line += f" sustained {result.sustained:.0f} req/s"
            results[c] = result
            print(line, flush=True)
    finally:
        listener.stop()
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=3000, help="requests per concurrency level (default 3000)")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--generators", type=int, default=2, help="generator processes at c=32 (default 2)")
    args = parser.parse_args(argv)

    cert = CertServer()
    total = args.warmup + args.n * len(LEVELS)
    print(f"signing {total} notifications on {os.cpu_count()} cores...", flush=True)
    bodies = notifications(total, "load", cert.key_pem, cert.cert_url)

    def processes_at(c):
        return 1 if c <= 4 else args.generators

    snsd = measure("snsd", start_snsd(workdir("load-snsd"), trusted_host=cert.trusted_host), bodies, args.n,
                   args.warmup, processes_at)  # fmt: skip
    base = measure("baseline", start_baseline(workdir("load-base")), bodies, args.n, args.warmup, processes_at)
    floor = measure("floor", start_floor(workdir("load-floor")), bodies, args.n, args.warmup, processes_at, False)
    floor_nf = measure("floor-nf", start_floor(workdir("load-floor-nf"), "--no-form-parsing"), bodies, args.n,
                       args.warmup, processes_at, False)  # fmt: skip
    cert.close()

    parts = []
    for c in LEVELS:
        s, b, f, nf = snsd[c], base[c], floor[c], floor_nf[c]
        parts.append(
            f"c={c}: snsd {s.rate:.0f}/s p50 {s.pct(0.5):.1f} p99 {s.pct(0.99):.1f}ms; "
            f"baseline {b.rate:.0f}/s p99 {b.pct(0.99):.1f}ms; floor {f.rate:.0f}/s p99 {f.pct(0.99):.1f}ms; "
            f"floor-nf {nf.rate:.0f}/s; snsd/floor {s.rate / f.rate:.2f}x, snsd/floor-nf {s.rate / nf.rate:.2f}x, "
            f"snsd/baseline {s.rate / b.rate:.2f}x, sustained snsd {s.sustained:.0f}/s baseline {b.sustained:.0f}/s, "
            f"p99 snsd/baseline {s.pct(0.99) / b.pct(0.99):.2f}; gen CPU {100 * s.generator_cpu / s.seconds:.0f}%"
        )
    print("load | " + " | ".join(parts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
