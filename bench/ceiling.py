"""The p99 ceiling at concurrency 32: what a Klein listener on this machine can reach at all.

Issue 7 asks for snsd's p99 at c=32 to be at most a quarter of the stdlib baseline's.  This
measures, in alternating rounds, snsd (as bench/load.py runs it), the bare Klein route with the
Site's form parsing off as snsd has it (bench/floor.py --no-form-parsing) in one process, the same
floor in two processes sharing the port (SO_REUSEPORT: the kernel spreads the 32 connections over
both, so the two cores serve it), and the baseline; each listener fresh per round, warmed at c=4,
then loaded at c=32.  Per round it prints each one's requests/s, p50 and p99 and its p99 over the
baseline's of the same round; then the medians.

The floor does nothing but read the body and parse its JSON: a listener that also verifies a
signature and spools durably cannot beat it in the same number of processes.

    python bench/ceiling.py [--rounds 3] [-n 3000]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BENCH,
    CertServer,
    Listener,
    notifications,
    run_load,
    start_baseline,
    start_snsd,
    workdir,
)

WARMUP = 300
TARGET = 0.25  # issue 7: p99 at c=32 at most a quarter of the baseline's


class SharedFloor:
    """The floor in ``count`` processes listening on one port."""

    def __init__(self, count: int):
        # Hold the port (bound, not listening, so it takes no connections) while the floors bind it.
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        self.port = holder.getsockname()[1]
        work = workdir(f"ceiling-floor{count}")
        argv = [sys.executable, str(BENCH / "floor.py"), "--port", str(self.port), "--no-form-parsing", "--reuse-port"]
        self.floors = []
        try:
            for i in range(count):
                self.floors.append(Listener(f"floor{i}", argv, work))
        except BaseException:
            self.stop()
            raise
        finally:
            holder.close()
        self.process = self.floors[0].process  # run_load measures only one; the floors' CPU is not printed

    def stop(self):
        for floor in self.floors:
            floor.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=3000, help="requests per listener per round (default 3000)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    cert = CertServer()
    per_round = WARMUP + args.n
    print(f"signing {args.rounds * per_round} notifications...", flush=True)
    # snsd drops a MessageId it has seen, so every round gets its own; the others reuse them.
    bodies = notifications(args.rounds * per_round, "ceiling", cert.key_pem, cert.cert_url)
    starters = {
        "snsd": lambda: start_snsd(workdir("ceiling-snsd"), trusted_host=cert.trusted_host),
        "floor-nf": lambda: SharedFloor(1),
        "floor-nf x2": lambda: SharedFloor(2),
        "baseline": lambda: start_baseline(workdir("ceiling-base")),
    }
    p99: dict[str, list[float]] = {name: [] for name in starters}
    ratios: dict[str, list[float]] = {name: [] for name in starters if name != "baseline"}
    try:
        for r in range(args.rounds):
            share = bodies[r * per_round : (r + 1) * per_round]
            order = list(starters) if r % 2 == 0 else list(reversed(starters))
            results = {}
            for name in order:
                listener = starters[name]()
                try:
                    run_load(listener.port, share[:WARMUP], 4, 1)
                    results[name] = run_load(listener.port, share[WARMUP:], 32, 2)
                finally:
                    listener.stop()
            base = results["baseline"].pct(0.99)
            parts = []
            for name in starters:
                result = results[name]
                p99[name].append(result.pct(0.99))
                part = f"{name} {result.rate:.0f}/s p50 {result.pct(0.5):.1f} p99 {result.pct(0.99):.1f}ms"
                if name in ratios:
                    ratios[name].append(result.pct(0.99) / base)
                    part += f" ({ratios[name][-1]:.2f}x)"
                parts.append(part)
            print(f"  round {r + 1}: " + "; ".join(parts), flush=True)
    finally:
        cert.close()

    summary = "; ".join(
        f"{name} p99 {statistics.median(ratios[name]):.2f}x the baseline's "
        f"({min(ratios[name]):.2f}-{max(ratios[name]):.2f})"
        for name in ratios
    )
    print(f"ceiling c=32, medians of {args.rounds} rounds | baseline p99 {statistics.median(p99['baseline']):.1f}ms; "
          f"{summary}; target <= {TARGET}x", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
