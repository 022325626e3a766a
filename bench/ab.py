"""A/B of two snsd builds over real sockets, loaded in alternating rounds.

Runs this tree's snsd (A) and another build's (B: a git revision, checked out for the run in a
temporary worktree, or the path of another checkout) side by side, each with a durable spool,
verified signatures and the trivial job, and loads them with the same kind of distinct signed
notifications in alternating rounds (A then B, B then A, ...).  Drift on the machine then falls
on both alike, where bench/load.py's back-to-back runs vary by 15-25 %.  Prints, per build, each
round's requests/s and the reactor thread's CPU per request, then one summary line.

    python bench/ab.py HEAD~1 [-c 32] [--rounds 8] [-n 2500]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CertServer, notifications, run_load, start_snsd, stat_cpu, workdir  # noqa: E402

THIS_TREE = Path(__file__).resolve().parent.parent
WARMUP = 300


def reactor_cpu(pid: int) -> float:
    """CPU seconds of a process's main thread (the reactor's)."""
    return stat_cpu(Path(f"/proc/{pid}/task/{pid}/stat"))


def checkout(other: str, scratch: Path) -> tuple[Path, bool]:
    """The tree to run as B: ``other`` itself if it is a directory, else a worktree at that revision."""
    if Path(other).is_dir():
        return Path(other).resolve(), False
    tree = scratch / "b"
    subprocess.run(["git", "-C", str(THIS_TREE), "worktree", "add", "--detach", str(tree), other], check=True)
    return tree, True


def main(args) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="snsd-bench-ab-"))
    tree_b, made = checkout(args.other, scratch)
    cert = CertServer()
    per_listener = WARMUP + args.rounds * args.n
    bodies = notifications(2 * per_listener, "ab", cert.key_pem, cert.cert_url)
    listeners = {}
    try:
        for name, tree, share in (("A", THIS_TREE, bodies[:per_listener]), ("B", tree_b, bodies[per_listener:])):
            work = workdir(f"ab-{name}")
            listener = start_snsd(work, trusted_host=cert.trusted_host, env={"PYTHONPATH": f"{work}:{tree}"})
            rounds = [share[WARMUP + i * args.n : WARMUP + (i + 1) * args.n] for i in range(args.rounds)]
            listeners[name] = (listener, iter(rounds))
            run_load(listener.port, share[:WARMUP], 4, 1)
        rates: dict[str, list[float]] = {"A": [], "B": []}
        cpu: dict[str, list[float]] = {"A": [], "B": []}
        processes = 1 if args.c <= 4 else 2
        for r in range(args.rounds):
            for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                listener, rounds = listeners[name]
                pid = listener.process.pid
                before = reactor_cpu(pid)
                result = run_load(listener.port, next(rounds), args.c, processes, pid)
                rates[name].append(result.rate)
                cpu[name].append(1e6 * (reactor_cpu(pid) - before) / result.requests)
    finally:
        for listener, _ in listeners.values():
            listener.stop()
        cert.close()
        if made:
            subprocess.run(["git", "-C", str(THIS_TREE), "worktree", "remove", "--force", str(tree_b)], check=False)
    for name, label in (("A", "this tree"), ("B", args.other)):
        print(
            f"  {name} ({label}): req/s {' '.join(f'{x:.0f}' for x in rates[name])}"
            f" | reactor us/request {' '.join(f'{x:.0f}' for x in cpu[name])}",
            flush=True,
        )
    mean = {name: sum(values) / len(values) for name, values in rates.items()}
    mean_cpu = {name: sum(values) / len(values) for name, values in cpu.items()}
    ahead = sum(a > b for a, b in zip(rates["A"], rates["B"], strict=True))
    print(
        f"ab | c={args.c}, {args.rounds} rounds of {args.n}: A (this tree) {mean['A']:.0f} req/s, "
        f"{mean_cpu['A']:.0f} us/request; B ({args.other}) {mean['B']:.0f} req/s, {mean_cpu['B']:.0f} us/request; "
        f"A/B {mean['A'] / mean['B']:.2f}x, A ahead in {ahead} of {args.rounds} rounds",
        flush=True,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("other", help="build B: a git revision (checked out in a temporary worktree) or a directory")
    parser.add_argument("-c", type=int, default=32, help="concurrent connections (default 32)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds per build (default 8)")
    parser.add_argument("-n", type=int, default=2500, help="requests per round (default 2500)")
    main(parser.parse_args())
