"""Instructions per request on the reactor thread, counted by callgrind: a figure load cannot move.

Runs a build's own bench/path.py (this tree, a git revision checked out in a temporary worktree, or
another checkout's directory) under ``valgrind --tool=callgrind``, counting only while the measured
requests run (switched on and off with ``callgrind_control -i`` around them: start-up, warm-up and
the signing of the bodies are left out), and prints the reactor thread's instructions per request
and the part of them spent inside SQLite.  Which requests share a reactor turn still depends on
timing, so a build varies by about 3 % from run to run; a difference smaller than that is not one.

    python bench/count.py [1d34374 HEAD~1 /path/to/checkout ...] [-c 4] [-n 400]

Needs valgrind (callgrind_control, callgrind_annotate); each build takes about a minute.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

THIS_TREE = Path(__file__).resolve().parent.parent
WARMUP = 300


def inner(tree: Path, c: int, n: int) -> None:
    """Inside valgrind: the tree's bench/path.py with counting on for the measured requests only."""
    import importlib.util

    sys.path[:0] = [str(tree / "bench"), str(tree)]
    spec = importlib.util.spec_from_file_location("build_path", tree / "bench" / "path.py")
    path = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(path)
    thread_cpu, calls = path.thread_cpu, []

    # path.py reads the threads' CPU just before the measured requests and just after them.
    def counted():
        calls.append(None)
        if len(calls) == 2:
            subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], stdout=subprocess.DEVNULL, check=True)
        cpu = thread_cpu()
        if len(calls) == 1:
            subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], stdout=subprocess.DEVNULL, check=True)
        return cpu

    path.thread_cpu = counted
    path.WARMUP = WARMUP
    from twisted.internet import defer, task

    task.react(lambda _reactor: defer.ensureDeferred(path.main(argparse.Namespace(c=c, n=n), [])))


def count(tree: Path, c: int, n: int, scratch: Path) -> tuple[int, int]:
    """(instructions, of which in SQLite) per request on the reactor thread."""
    out = scratch / f"callgrind.{len(list(scratch.iterdir()))}"
    valgrind = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes"]
        + [f"--callgrind-out-file={out}.%p", sys.executable, __file__, "--inner", str(tree), str(c), str(n)],
        env={**os.environ, "PYTHONPATH": str(tree)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if valgrind.wait():
        raise SystemExit(f"{tree}: the run under valgrind failed ({valgrind.returncode})")
    # Thread 1 of the measured process (valgrind runs it under its own pid): the reactor's.  The
    # forked callgrind_control calls leave files of their own, counted off, with other pids.
    main_thread = Path(f"{out}.{valgrind.pid}-01")
    total = next(int(line.split()[1]) for line in main_thread.open() if line.startswith("totals:"))
    annotated = subprocess.run(
        ["callgrind_annotate", "--threshold=100", str(main_thread)], capture_output=True, text=True, check=True
    ).stdout
    sqlite = sum(int(line.split()[0].replace(",", "")) for line in annotated.splitlines() if "libsqlite3" in line)
    return total // n, sqlite // n


def checkout(build: str, scratch: Path) -> tuple[Path, bool]:
    """The tree of ``build``: itself if it is a directory, else a worktree at that revision."""
    if Path(build).is_dir():
        return Path(build).resolve(), False
    tree = scratch / f"tree-{build.replace('/', '_')}"
    subprocess.run(["git", "-C", str(THIS_TREE), "worktree", "add", "--detach", str(tree), build], check=True)
    return tree, True


def main(args) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="snsd-bench-count-"))
    made = []
    try:
        for build in args.builds or [str(THIS_TREE)]:
            tree, made_it = checkout(build, scratch)
            if made_it:
                made.append(tree)
            instructions, sqlite = count(tree, args.c, args.n, scratch)
            print(f"count | {build} c={args.c} n={args.n}: {instructions:,} instructions/request, {sqlite:,} in SQLite")
    finally:
        for tree in made:
            subprocess.run(["git", "-C", str(THIS_TREE), "worktree", "remove", "--force", str(tree)], check=False)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--inner"]:
        inner(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("builds", nargs="*", help="git revisions or directories (default: this tree)")
        parser.add_argument("-c", type=int, default=4, help="concurrent connections (default 4)")
        parser.add_argument("-n", type=int, default=400, help="requests counted (default 400)")
        main(parser.parse_args())
