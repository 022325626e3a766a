"""``snsd-admin``: look at and act on the spool from outside the daemon.

    snsd-admin [--spool PATH] dead-letters list [--reason R] [--limit N]
    snsd-admin [--spool PATH] dead-letters export [--reason R] [--output FILE|-]
    snsd-admin [--spool PATH] dead-letters replay [--id N ...] [--reason R] [daemon options ...]
    snsd-admin [--spool PATH] spool stats
    snsd-admin --queue URL dead-letters list|export|replay [--id MESSAGE_ID ...]

With ``--queue`` (``--role listener/worker``), the dead letters are those of the SQS queue's
dead-letter queue (its redrive policy names it): list and export read each once without consuming
it, and replay sends each back to the main queue, where a worker runs it again.

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

from twisted.python import usage

from snsd import spool_schema
from snsd.config import SNSDOptions
from snsd.results import run_job
from snsd.sinks import make_sink
from snsd.spool import SpoolVersionError, fail_dead_letter_again, list_dead_letters, resolve_dead_letter
from snsd.timestamps import iso

EXIT_USAGE = 2


def _open(path: str) -> sqlite3.Connection:
    if path == ":memory:":
        raise SystemExit("snsd-admin: a :memory: spool lives and dies inside the daemon; there is nothing to open")
    if not os.path.exists(path):
        raise SystemExit(f"snsd-admin: no spool at {path} (give --spool or set SNSD_SPOOL_PATH)")
    # The daemon may be writing: wait for its (short) transactions rather than fail.
    conn = sqlite3.connect(path, timeout=10)
    conn.execute("PRAGMA busy_timeout=10000")
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not {"records", "dead_letters", "messages"} <= tables:
        conn.close()
        raise SystemExit(f"snsd-admin: {path} is not an snsd spool (no records/dead_letters tables)")
    try:
        spool_schema.refuse_newer(conn)  # its tables may no longer mean what this code thinks
    except SpoolVersionError as e:
        conn.close()
        raise SystemExit(f"snsd-admin: cannot use the spool {path}: {e}") from None
    return conn


COLUMNS = ("id", "message id", "object", "reason", "error", "attempts", "failed at")
# Long values are cut so a row stays on one line; ``export`` has them whole.
WIDEST = {"message id": 40, "object": 60, "error": 60}


def _cut(text: str, width: int | None) -> str:
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def list_command(conn, args, out) -> int:
    letters = list_dead_letters(conn, limit=args.limit, reason=args.reason, ids=args.id)
    rows = [
        (
            str(d.id),
            d.message_id or "-",
            f"s3://{d.record.bucket}/{d.record.key}",
            d.reason,
            " ".join((d.error or "-").split()),
            str(d.attempts),
            iso(d.failed_at, "seconds"),
        )
        for d in letters
    ]
    rows = [tuple(_cut(value, WIDEST.get(column)) for column, value in zip(COLUMNS, row, strict=True)) for row in rows]
    widths = [max([len(column)] + [len(row[i]) for row in rows]) for i, column in enumerate(COLUMNS)]
    for row in (COLUMNS, *rows):
        print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip(), file=out)
    print(f"{len(letters)} dead letter{'' if len(letters) == 1 else 's'}", file=out)
    return 0


def export_command(conn, args, out) -> int:
    target = out if args.output in (None, "-") else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    try:
        for d in list_dead_letters(conn, reason=args.reason, ids=args.id):
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
                        "failed_at": iso(d.failed_at, "seconds"),
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
    try:
        sink = make_sink(settings)
    except OSError as e:
        raise SystemExit(f"snsd-admin: cannot open the result sink: {e}") from None
    # Read once, then one short transaction per outcome: the daemon keeps writing meanwhile.
    letters = list_dead_letters(conn, reason=args.reason, ids=args.id)
    resolved = failed = 0
    try:
        for d in letters:
            line = run_job(settings.job, d.record, d.attempts + 1)
            error = line["error"]
            try:
                sink.write(line)
            except Exception as e:
                # No result recorded, so it is not resolved, whatever the job said.
                line["status"], error = "error", f"recording the result failed: {type(e).__name__}: {e}"
            if line["status"] == "ok":
                resolve_dead_letter(conn, d.id)
                resolved += 1
            else:
                fail_dead_letter_again(conn, d.id, error, time.time())
                failed += 1
            print(
                f"{d.id}: s3://{d.record.bucket}/{d.record.key} {line['status']}" + (f" ({error})" if error else ""),
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
    # One read transaction, so the figures agree with each other while the daemon writes.
    with conn:
        conn.execute("BEGIN")
        pending, oldest = conn.execute("SELECT COUNT(*), MIN(enqueued_at) FROM records").fetchone()
        (messages,) = conn.execute("SELECT COUNT(*) FROM messages").fetchone()
        by_reason = conn.execute("SELECT reason, COUNT(*) FROM dead_letters GROUP BY reason ORDER BY reason").fetchall()
        recent = conn.execute(
            "SELECT message_id, accepted_at FROM messages ORDER BY accepted_at DESC, message_id DESC LIMIT ?",
            (args.recent,),
        ).fetchall()
    print(f"records owed a result: {pending}", file=out)
    if oldest is not None:
        print(f"  oldest spooled at {iso(oldest, 'seconds')}", file=out)
    print(f"remembered message ids: {messages}", file=out)
    print(f"dead letters: {sum(n for _, n in by_reason)}", file=out)
    for reason, count in by_reason:
        print(f"  {reason}: {count}", file=out)
    if recent:
        print(f"most recent message ids (up to {args.recent}):", file=out)
        for message_id, accepted_at in recent:
            print(f"  {iso(accepted_at, 'seconds')}  {message_id}", file=out)
    return 0


def queue_command(args, out) -> int:
    """``dead-letters list|export|replay`` on the SQS dead-letter queue of ``args.queue``."""
    from botocore.exceptions import BotoCoreError, ClientError

    from snsd.sqs.deadletters import DeadLetterQueue

    ids = set(args.id) if args.id else None
    try:
        dlq = DeadLetterQueue(args.queue)
        if args.run is list_command:
            letters = list(dlq.read(limit=args.limit, ids=ids))
            for d in letters:
                objects, sent = " ".join(d.objects()) or "-", iso(d.sent_at, "seconds")
                print(f"{d.message_id}  {_cut(objects, 80)}  receives {d.receive_count}  sent {sent}", file=out)
            print(f"{len(letters)} dead letter{'' if len(letters) == 1 else 's'} in {dlq.url}", file=out)
            return 0
        if args.run is export_command:
            target = out if args.output in (None, "-") else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
            try:
                for d in dlq.read(ids=ids):
                    target.write(
                        json.dumps(
                            {
                                "message_id": d.message_id,
                                "objects": d.objects(),
                                "body": d.body,
                                "receive_count": d.receive_count,
                                "sent_at": iso(d.sent_at, "seconds"),
                            },
                            ensure_ascii=False,
                        )
                        + "\n"
                    )
            finally:
                if target is not out:
                    target.close()
            return 0
        sent = failed = 0
        for d, ok, error in dlq.replay(ids=ids):
            sent, failed = sent + ok, failed + (not ok)
            print(
                f"{d.message_id}: {' '.join(d.objects()) or '-'} {'sent back' if ok else 'kept (' + error + ')'}",
                file=out,
            )
        print(f"replayed {sent + failed}: {sent} sent back to {args.queue}, {failed} kept", file=out)
        return 0 if failed == 0 else 1
    except (BotoCoreError, ClientError) as e:
        print(f"snsd-admin: {e}", file=sys.stderr)
        return EXIT_USAGE


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="snsd-admin", description="Inspect snsd's spool and replay its dead letters.")
    p.add_argument(
        "--spool",
        default=os.environ.get("SNSD_SPOOL_PATH", "./snsd-spool.sqlite3"),
        help="the spool database (default $SNSD_SPOOL_PATH or ./snsd-spool.sqlite3)",
    )
    p.add_argument("--queue", help="an SQS queue URL: dead-letters work on its dead-letter queue")
    # Also accepted after the command; otherwise replay would hand it to the daemon's options and
    # quietly use the default spool.
    spool_option = argparse.ArgumentParser(add_help=False)
    spool_option.add_argument("--spool", default=argparse.SUPPRESS, help="the spool database")
    spool_option.add_argument("--queue", default=argparse.SUPPRESS, help="an SQS queue URL (its dead letters)")
    groups = p.add_subparsers(dest="group", required=True)
    dead = groups.add_parser("dead-letters", help="list, export or replay dead letters").add_subparsers(
        dest="command", required=True
    )
    listing = dead.add_parser("list", help="a table of dead letters", parents=[spool_option])
    listing.add_argument("--reason", help="only this reason (job_error, breaker_open, drain_timeout, sink_error)")
    listing.add_argument("--limit", type=int)
    listing.add_argument("--id", type=_id, nargs="+", action="extend", help="only these dead letters")
    listing.set_defaults(run=list_command)
    export = dead.add_parser(
        "export", help="JSON lines with the record and the original SNS envelope", parents=[spool_option]
    )
    export.add_argument("--reason")
    export.add_argument("--id", type=_id, nargs="+", action="extend", help="only these dead letters")
    export.add_argument("--output", "-o", help="file (default: standard output)")
    export.set_defaults(run=export_command)
    replay = dead.add_parser(
        "replay",
        parents=[spool_option],
        help="run dead letters again through the job and the result sink",
        epilog="Other options are the daemon's: --job, --rules, --dry-run, --results, "
        "--results-bucket, --results-prefix (and their environment variables).",
    )
    replay.add_argument("--id", type=_id, nargs="+", action="extend", help="only these dead letters")
    replay.add_argument("--reason")
    replay.set_defaults(run=replay_command)
    spool = groups.add_parser("spool", help="spool statistics").add_subparsers(dest="command", required=True)
    stats = spool.add_parser(
        "stats", help="records owed a result, dead letters by reason, recent message ids", parents=[spool_option]
    )
    stats.add_argument("--recent", type=int, default=10, help="how many recent message ids to show (default 10)")
    stats.set_defaults(run=stats_command)
    return p


def _id(text: str) -> int | str:
    """A spool dead letter's number, or an SQS MessageId (with --queue)."""
    return int(text) if text.isdigit() else text


def main(argv: list[str] | None = None, out=None) -> int:
    out = out or sys.stdout
    args, rest = parser().parse_known_args(argv)
    if args.queue:
        if args.group != "dead-letters" or rest:
            parser().error("--queue goes with dead-letters list|export|replay and their own options only")
        return queue_command(args, out)
    if rest and args.run is not replay_command:
        parser().error(f"unrecognized arguments: {' '.join(rest)}")
    args.daemon_options = rest
    try:
        conn = _open(args.spool)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return EXIT_USAGE
    except sqlite3.DatabaseError as e:
        print(f"snsd-admin: cannot read {args.spool}: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.run(conn, args, out)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # `snsd-admin ... | head`: the reader left; say nothing more (and nothing at exit's flush).
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
