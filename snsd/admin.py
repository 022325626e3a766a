"""``snsd-admin``: look at and act on the spool from outside the daemon.

    snsd-admin [--spool PATH] dead-letters list [--reason R] [--limit N]
    snsd-admin [--spool PATH] dead-letters export [--reason R] [--output FILE|-]
    snsd-admin [--spool PATH] dead-letters replay [--id N ...] [--reason R] [daemon options ...]
    snsd-admin [--spool PATH] spool stats

Replay runs each selected dead letter through the same job and the same result sink as the daemon
(``--job``, ``--rules``, ``--dry-run``/``--results``, ``--results-bucket``/``--results-prefix``, with the
same environment variables), deletes those that now succeed, and keeps those that fail again with one
more attempt.  It is safe while the daemon runs: SQLite in WAL mode, short transactions.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from datetime import UTC, datetime

from twisted.python import usage

from snsd.config import SNSDOptions
from snsd.results import run_job
from snsd.sinks import make_sink
from snsd.spool import fail_dead_letter_again, list_dead_letters, resolve_dead_letter

EXIT_USAGE = 2


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _open(path: str) -> sqlite3.Connection:
    if path != ":memory:" and not os.path.exists(path):
        raise SystemExit(f"snsd-admin: no spool at {path} (give --spool or set SNSD_SPOOL_PATH)")
    conn = sqlite3.connect(path, timeout=10)
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def list_command(conn, args, out) -> int:
    letters = list_dead_letters(conn, limit=args.limit, reason=args.reason)
    print(f"{'id':>6}  {'failed at':20}  {'attempts':>8}  {'reason':14}  {'message id':36}  object / error", file=out)
    for d in letters:
        print(
            f"{d.id:>6}  {_iso(d.failed_at):20}  {d.attempts:>8}  {d.reason:14}  {d.message_id or '-':36}  "
            f"s3://{d.record.bucket}/{d.record.key}",
            file=out,
        )
        if d.error:
            print(f"{'':>98}{d.error[:200]}", file=out)
    print(f"{len(letters)} dead letters", file=out)
    return 0


def export_command(conn, args, out) -> int:
    target = out if args.output in (None, "-") else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    try:
        for d in list_dead_letters(conn, reason=args.reason):
            try:
                envelope = json.loads(d.envelope) if d.envelope else None
            except ValueError:
                envelope = d.envelope
            target.write(
                json.dumps(
                    {
                        "id": d.id,
                        "message_id": d.message_id,
                        "record": d.record.to_dict(),
                        "envelope": envelope,
                        "reason": d.reason,
                        "error": d.error,
                        "failed_at": _iso(d.failed_at),
                        "attempts": d.attempts,
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
    finally:
        if target is not out:
            target.close()
    return 0


def replay_command(conn, args, out) -> int:
    options = SNSDOptions()
    try:
        options.parseOptions(args.daemon_options)
    except usage.UsageError as e:
        raise SystemExit(f"snsd-admin: {e}") from None
    settings = options.settings
    sink = make_sink(settings)
    letters = list_dead_letters(conn, reason=args.reason, ids=args.id)
    resolved = failed = 0
    try:
        for d in letters:
            line = run_job(settings["job"], d.record, d.attempts + 1)
            sink.write(line)
            if line["status"] == "ok":
                resolve_dead_letter(conn, d.id)
                resolved += 1
            else:
                fail_dead_letter_again(conn, d.id, line["error"], time.time())
                failed += 1
            print(
                f"{d.id}: s3://{d.record.bucket}/{d.record.key} {line['status']}"
                + (f" ({line['error_kind']}: {line['error']})" if line["error"] else ""),
                file=out,
            )
    finally:
        sink.close()
    print(
        f"replayed {len(letters)}: {resolved} resolved, {failed} failed again (kept); results to {sink.describe()}",
        file=out,
    )
    return 0 if failed == 0 else 1


def stats_command(conn, args, out) -> int:
    (pending,) = conn.execute("SELECT COUNT(*) FROM records").fetchone()
    (messages,) = conn.execute("SELECT COUNT(*) FROM messages").fetchone()
    by_reason = conn.execute("SELECT reason, COUNT(*) FROM dead_letters GROUP BY reason ORDER BY reason").fetchall()
    print(f"records owed a result: {pending}", file=out)
    print(f"remembered message ids: {messages}", file=out)
    print(f"dead letters: {sum(n for _, n in by_reason)}", file=out)
    for reason, count in by_reason:
        print(f"  {reason}: {count}", file=out)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="snsd-admin", description="Inspect snsd's spool and replay its dead letters.")
    p.add_argument(
        "--spool",
        default=os.environ.get("SNSD_SPOOL_PATH", "./snsd-spool.sqlite3"),
        help="the spool database (default $SNSD_SPOOL_PATH or ./snsd-spool.sqlite3)",
    )
    groups = p.add_subparsers(dest="group", required=True)
    dead = groups.add_parser("dead-letters", help="list, export or replay dead letters").add_subparsers(
        dest="command", required=True
    )
    listing = dead.add_parser("list", help="a table of dead letters")
    listing.add_argument("--reason", help="only this reason (job_error, breaker_open, drain_timeout, sink_error)")
    listing.add_argument("--limit", type=int)
    listing.set_defaults(run=list_command)
    export = dead.add_parser("export", help="JSON lines with the record and the original SNS envelope")
    export.add_argument("--reason")
    export.add_argument("--output", "-o", help="file (default: standard output)")
    export.set_defaults(run=export_command)
    replay = dead.add_parser(
        "replay",
        help="run dead letters again through the job and the result sink",
        epilog="Other options are the daemon's: --job, --rules, --dry-run, --results, "
        "--results-bucket, --results-prefix (and their environment variables).",
    )
    replay.add_argument("--id", type=int, action="append", help="only this dead letter (repeatable)")
    replay.add_argument("--reason")
    replay.set_defaults(run=replay_command)
    spool = groups.add_parser("spool", help="spool statistics").add_subparsers(dest="command", required=True)
    spool.add_parser("stats", help="records owed a result, dead letters by reason").set_defaults(run=stats_command)
    return p


def main(argv: list[str] | None = None, out=None) -> int:
    out = out or sys.stdout
    args, rest = parser().parse_known_args(argv)
    if rest and args.run is not replay_command:
        parser().error(f"unrecognized arguments: {' '.join(rest)}")
    args.daemon_options = rest
    try:
        conn = _open(args.spool)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.run(conn, args, out)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return EXIT_USAGE
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
