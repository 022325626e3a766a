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

from snsd.tools.localstack import LocalStackProcess, aws_environment, ensure_venv, free_port  # noqa: E402
from snsd.tools.wire import wire_sqs  # noqa: E402

ADMIN = re.compile(rb"admin routes on [^:\s]+:(\d+)")
CONCURRENCY = 8


def admin_metric(listener, name: str) -> float:
    port = int(ADMIN.search(listener.log_path.read_bytes()).group(1))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def distinct_results(dirs) -> set[str]:
    return {line["key"] for d in dirs for line in result_lines(d / "results.jsonl") if line.get("status") == "ok"}


def wait_results(dirs, n: int, timeout: float, listener=None) -> tuple[float, float | None]:
    """(when the last result appeared, when the listener's forwarder had sent all n) in perf_counter time."""
    deadline = time.perf_counter() + timeout
    forwarded_at = None
    while time.perf_counter() < deadline:
        if listener is not None and forwarded_at is None and admin_metric(listener, "snsd_forwarded_total") >= n:
            forwarded_at = time.perf_counter()
        if len(distinct_results(dirs)) >= n and (listener is None or forwarded_at is not None):
            return time.perf_counter(), forwarded_at
        time.sleep(0.05)
    return float("nan"), forwarded_at


def run(label, mode, bodies, n, ls_pid, env, job_args, workers_per_process, timeout):
    """One configuration; returns its figures."""
    tag = f"{label}-{mode}-{uuid.uuid4().hex[:6]}"
    procs, result_dirs = [], []
    job, extra = job_args
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
            count = int(mode.split("-")[1])
            listener = start_snsd(
                workdir(tag + "-l"),
                "--role",
                "listener",
                "--queue",
                queue,
                *extra,
                job=job,
                trusted_host=TRUSTED,
                env=env,
            )
            procs.append(listener)
            for i in range(count):
                wd = workdir(f"{tag}-w{i}")
                procs.append(
                    start_snsd(
                        wd,
                        "--role",
                        "worker",
                        "--queue",
                        queue,
                        "--workers",
                        str(workers_per_process),
                        *extra,
                        job=job,
                        env=env,
                    )
                )
                result_dirs.append(wd)
        ls_cpu0, t0 = process_cpu(ls_pid), time.perf_counter()
        load = run_load(listener.port, bodies, CONCURRENCY, 1, listener.process.pid)
        done_at, forwarded_at = wait_results(result_dirs, n, timeout, listener if mode != "single" else None)
        ls_cpu = process_cpu(ls_pid) - ls_cpu0
        lost = n - len(distinct_results(result_dirs))
        end_to_end = n / (done_at - load.started) if done_at == done_at else float("nan")
        figures = {
            "ingest": load.rate,
            "statuses": load.statuses,
            "end_to_end": end_to_end,
            "localstack_cpu": ls_cpu / (time.perf_counter() - t0),
            "lost": lost,
        }
        if mode != "single":
            figures["forwarded"] = admin_metric(listener, "snsd_forwarded_total")
            if forwarded_at is not None:
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
    parser.add_argument("--modes", default="single,sqs-1,sqs-2")
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
        for mode in modes:
            figures = run(
                "sleep50",
                mode,
                sleep_bodies,
                args.n,
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
                figures = run(
                    "dq",
                    mode,
                    bodies,
                    args.dq_files,
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
