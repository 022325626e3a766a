"""Scale-out on SQS: records per second through listener -> SQS -> workers, next to one process.

In one run, on one LocalStack of its own (so its CPU can be measured beside the rest):

  single   one ``twistd snsd`` (``--role all``): HTTP -> SQLite spool -> jobs
  sqs-1    one listener (``--role listener``) + one worker (``--role worker``) on a fresh queue
  sqs-2    one listener + two workers on a fresh queue

for two jobs: ``sleep50`` (50 ms of sleep: the pool's size, not the CPU, bounds it) and the built-in
data-quality job on ``--dq-files`` CSV objects of ``--size``.  N distinct signed notifications are
posted at concurrency 8; reported per run: the listener's ingest rate (answers per second during
the POSTs), end to end records per second (first POST to last result line), the forwarder's
sustained send rate (records SQS confirmed per second until the outbox is empty), LocalStack's
CPU share over the run, and lost (records without a result).

    python bench/scale.py [-n 600] [--workers 4] [--dq-files 16] [--size 5MiB]

Figures and the machine's load at the time go in docs/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CertServer, notifications, process_cpu, result_lines, run_load, start_snsd, workdir  # noqa: E402
from dq_bench import BUCKET, RULES, parse_size, upload  # noqa: E402

from snsd.tools.wire import wire_sqs  # noqa: E402
from snsd_devtools.localstack import LocalStackProcess, aws_environment, ensure_venv, free_port  # noqa: E402

ADMIN = re.compile(rb"admin routes on [^:\s]+:(\d+)")
CONCURRENCY = 8


def admin_metric(listener, name: str) -> float:
    port = int(ADMIN.search(listener.log_path.read_bytes()).group(1))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def message_ids(bodies) -> set[str]:
    return {json.loads(body)["MessageId"] for body in bodies}


def distinct_results(dirs, ids: set[str]) -> set[str]:
    """Objects with an ok result from one of the notifications ``ids`` (a warm-up's are not counted)."""
    return {
        line["key"]
        for d in dirs
        for line in result_lines(d / "results.jsonl")
        if line.get("status") == "ok" and line.get("message_id") in ids
    }


def forwarded(listener) -> float:
    return admin_metric(listener, "snsd_forwarded_total") if listener is not None else 0.0


def wait_results(dirs, ids: set[str], timeout: float, listener=None, before=0.0) -> tuple[float, float | None]:
    """(when the last result appeared, when the listener's forwarder had sent them all) in perf_counter
    time; ``before``: the listener's forwarded count before these were posted."""
    deadline = time.perf_counter() + timeout
    forwarded_at = None
    n = len(ids)
    target = before + n
    while time.perf_counter() < deadline:
        if listener is not None and forwarded_at is None and admin_metric(listener, "snsd_forwarded_total") >= target:
            forwarded_at = time.perf_counter()
        if dirs and len(distinct_results(dirs, ids)) >= n and (listener is None or forwarded_at is not None):
            return time.perf_counter(), forwarded_at
        if not dirs and forwarded_at is not None:
            return float("nan"), forwarded_at
        time.sleep(0.05)
    return float("nan"), forwarded_at


def run(label, mode, warm, bodies, ls_pid, env, job_args, workers_per_process, timeout):
    """One configuration: start it, run ``warm`` through it (clients built, processes started), then
    measure ``bodies``; returns its figures.  Modes: single, listener (forwarding, no worker), sqs-N."""
    tag = f"{label}-{mode}-{uuid.uuid4().hex[:6]}"
    procs, result_dirs = [], []
    job, extra = job_args
    queue = None
    try:
        if mode == "single":
            wd = workdir(tag)
            listener = start_snsd(
                wd, "--workers", str(workers_per_process), *extra, job=job, trusted_host=TRUSTED, env=env
            )
            procs.append(listener)
            result_dirs.append(wd)
        else:
            queue = wire_sqs(env["AWS_ENDPOINT_URL"], tag, visibility_timeout=120).queue_url
            count = 0 if mode == "listener" else int(mode.split("-")[1])
            listener = start_snsd(
                workdir(tag + "-l"), "--role", "listener", "--queue", queue, *extra, job=job, trusted_host=TRUSTED,
                env=env,
            )  # fmt: skip
            procs.append(listener)
            for i in range(count):
                wd = workdir(f"{tag}-w{i}")
                worker = start_snsd(
                    wd, "--role", "worker", "--queue", queue, "--workers", str(workers_per_process), *extra,
                    job=job, env=env,
                )  # fmt: skip
                procs.append(worker)
                result_dirs.append(wd)
        forwarding = listener if mode != "single" else None
        if warm:
            before = forwarded(forwarding)
            run_load(listener.port, warm, CONCURRENCY, 1)
            wait_results(result_dirs, message_ids(warm), timeout, forwarding, before)
        n = len(bodies)
        ls_cpu0, t0, before = process_cpu(ls_pid), time.perf_counter(), forwarded(forwarding)
        load = run_load(listener.port, bodies, CONCURRENCY, 1, listener.process.pid)
        done_at, forwarded_at = wait_results(result_dirs, message_ids(bodies), timeout, forwarding, before)
        ls_cpu = process_cpu(ls_pid) - ls_cpu0
        if result_dirs:
            lost = n - len(distinct_results(result_dirs, message_ids(bodies)))
        else:  # nothing took them from the queue: they are all there, or lost
            import boto3

            attributes = boto3.client("sqs").get_queue_attributes(
                QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages"]
            )["Attributes"]
            lost = n + len(warm) - int(attributes["ApproximateNumberOfMessages"])
        figures = {
            "ingest": load.rate,
            "statuses": load.statuses,
            "end_to_end": n / (done_at - load.started) if done_at == done_at else float("nan"),
            "localstack_cpu": ls_cpu / (time.perf_counter() - t0),
            "lost": lost,
        }
        if forwarding is not None and forwarded_at is not None:
            figures["forward_rate"] = n / (forwarded_at - load.started)
        return figures
    finally:
        for p in procs:
            p.process.send_signal(15)
        for p in procs:
            p.stop(timeout=60)


def main(argv=None) -> int:
    global TRUSTED
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=600, help="sleep50 records per run")
    parser.add_argument("--workers", type=int, default=4, help="job threads per process")
    parser.add_argument("--dq-files", type=int, default=16, help="data-quality objects per run (0: skip)")
    parser.add_argument("--size", type=parse_size, default=parse_size("5MiB"))
    parser.add_argument("--modes", default="single,listener,sqs-1,sqs-2")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    print(f"load average before: {os.getloadavg()}", flush=True)
    cert = CertServer()
    TRUSTED = cert.trusted_host
    ls = LocalStackProcess(ensure_venv(), free_port())
    ls.start()
    try:
        ls.wait_healthy()
        env = {**aws_environment(ls.url, base={}), "AWS_ENDPOINT_URL_S3": ls.url}
        os.environ.update(env)
        print(f"LocalStack on {ls.url}", flush=True)
        table = []
        sleep_bodies = notifications(args.n, f"scale-{uuid.uuid4().hex[:6]}", cert.key_pem, cert.cert_url)
        sleep_warm = notifications(40, f"warm-{uuid.uuid4().hex[:6]}", cert.key_pem, cert.cert_url)
        for mode in modes:
            figures = run(
                "sleep50",
                mode,
                sleep_warm,
                sleep_bodies,
                ls.process.pid,
                env,
                ("bench_jobs:sleep50", ()),
                args.workers,
                300,
            )
            table.append(("sleep50", mode, figures))
            print(f"  sleep50 {mode:7s} {figures}", flush=True)
        if args.dq_files:
            import boto3

            s3 = boto3.client("s3")
            s3.create_bucket(Bucket=BUCKET)
            # notifications() names its objects <prefix>/<i:06d>.csv: the same names are uploaded.
            keys = [f"bench/{i:06d}.csv" for i in range(args.dq_files)]
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda ik: upload(s3, ik[1], args.size, ik[0]), enumerate(keys)))
            rules = workdir("scale-rules") / "rules.yaml"
            rules.write_text(RULES)
            for mode in modes:
                # The same objects each run, in fresh processes: each run's results are its own.
                bodies = notifications(args.dq_files, "bench", cert.key_pem, cert.cert_url, bucket=BUCKET)
                warm = notifications(2, "bench", cert.key_pem, cert.cert_url, bucket=BUCKET)
                figures = run(
                    "dq",
                    mode,
                    warm,
                    bodies,
                    ls.process.pid,
                    env,
                    (None, ("--rules", str(rules), "--job-processes", "1")),
                    args.workers,
                    600,
                )
                table.append(("dq", mode, figures))
                print(f"  dq      {mode:7s} {figures}", flush=True)
    finally:
        ls.stop()
        cert.close()
    print(f"load average after: {os.getloadavg()}", flush=True)
    for job, mode, f in table:
        print(
            f"| {job} | {mode} | {f['ingest']:.0f} | {f['end_to_end']:.1f} | "
            f"{f.get('forward_rate', float('nan')):.0f} | {100 * f['localstack_cpu']:.0f}% | {f['lost']} |"
        )
    return 0


TRUSTED = None

if __name__ == "__main__":
    sys.exit(main())
