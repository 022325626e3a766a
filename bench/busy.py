"""Is the endpoint still responsive while the pool is busy?

Ten large CSV objects are uploaded to LocalStack once.  For each listener, ten notifications for
them are posted first, so all 10 workers chew on data-quality jobs, and then the ingest load
(c=32, keep-alive, distinct notifications) is measured while they run: snsd with its real
pyarrow job (signatures verified, durable spool), the stdlib baseline with the same rules in a
plain ``csv``-module job.

    python bench/busy.py [--size 64MiB] [-n 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
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
from dq_bench import BUCKET, RULES, generate, parse_size, upload  # noqa: E402

from snsd_devtools.localstack import aws_environment, ensure_localstack  # noqa: E402

BUSY_JOBS = """
import os, sys, threading
import boto3
sys.path.insert(0, os.environ["BENCH_DIR"])
from dq_bench import csv_baseline

_local = threading.local()

def csvjob(record):
    if not hasattr(_local, "s3"):
        _local.s3 = boto3.session.Session().client("s3")
    return csv_baseline(_local.s3, record.key)
"""
WORKERS = 10


def bench_bucket(url: str):
    """An S3 client for LocalStack at ``url``, with the benchmark bucket created."""
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    s3.create_bucket(Bucket=BUCKET)
    return s3


def dq_workdir(name: str, env: dict):
    """A listener's workdir holding the rules and the job module, and the environment they need."""
    wd = workdir(name)
    (wd / "rules.yaml").write_text(RULES)
    (wd / "busy_jobs.py").write_text(BUSY_JOBS)
    return wd, {**env, "BENCH_RULES": str(wd / "rules.yaml"), "BENCH_DIR": str(Path(__file__).parent)}


def warm_up(listener, bodies, timeout=120.0):
    """Run ``bodies`` (small objects) to completion, so the S3 clients are built (a daemon's steady state)."""
    run_load(listener.port, bodies, 10, 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [
            line for line in result_lines(listener.workdir / "results.jsonl") if line["key"].startswith("bench/warm/")
        ]
        if len(done) >= len(bodies):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{listener.name}: warm-up did not finish in {timeout:.0f}s")


def measure(name, listener, busy_bodies, load_bodies, warm_bodies=()):
    try:
        if warm_bodies:
            warm_up(listener, warm_bodies)
        # Occupy every worker with a large file, then measure ingest while they run.
        run_load(listener.port, busy_bodies, 10, 1)
        result = run_load(listener.port, load_bodies, 32, 2, listener.process.pid)
        busy_done = len(
            [line for line in result_lines(listener.workdir / "results.jsonl") if line["key"].startswith("bench/busy/")]
        )
        print(f"  {name:8s} {result.describe()} (busy jobs finished during the load: {busy_done}/10)", flush=True)
        return result
    finally:
        listener.stop(timeout=5)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="64MiB", help="size of each busy object (default 64MiB)")
    parser.add_argument("-n", type=int, default=2000, help="ingest requests measured per listener")
    parser.add_argument(
        "--snsd-workers",
        type=int,
        default=WORKERS,
        help="snsd's --workers (default 10, like the baseline); the 10 busy objects are posted either way",
    )
    parser.add_argument(
        "--warm",
        type=int,
        default=20,
        help="small-object jobs run to completion first, so each worker thread has its boto3 client "
        "(steady state); 0 measures a cold start (default 20)",
    )
    args = parser.parse_args(argv)
    size = parse_size(args.size)

    with ensure_localstack() as url:
        env = aws_environment(url)
        s3 = bench_bucket(url)
        keys = [f"bench/busy/{i:06d}.csv" for i in range(WORKERS)]
        started = time.monotonic()
        for i, key in enumerate(keys):
            upload(s3, key, size, seed=i)
        print(f"uploaded {WORKERS} x {args.size} in {time.monotonic() - started:.1f}s", flush=True)
        small = b"".join(generate(1))[: 64 * 1024]
        small = small[: small.rindex(b"\n") + 1]  # about 64 KiB of whole lines
        for i in range(args.warm):
            s3.put_object(Bucket=BUCKET, Key=f"bench/warm/{i:06d}.csv", Body=small)

        cert = CertServer()
        results = {}
        for name in ("snsd", "baseline"):
            wd, listener_env = dq_workdir(f"busy-{name}", env)
            signing = (cert.key_pem, cert.cert_url) if name == "snsd" else (None, None)
            busy = notifications(WORKERS, "bench/busy", *signing, bucket=BUCKET)
            load = notifications(args.n, f"ingest-{name}", *signing)
            warm = notifications(args.warm, "bench/warm", *signing, bucket=BUCKET)
            if name == "snsd":
                listener = start_snsd(
                    wd,
                    "--workers",
                    str(args.snsd_workers),
                    "--breaker-mode",
                    "spool",
                    "--rules",
                    str(wd / "rules.yaml"),
                    trusted_host=cert.trusted_host,
                    job=None,  # the built-in data-quality job (snsd.dq), as deployed
                    env=listener_env,
                )
            else:
                listener = start_baseline(wd, "--workers", str(WORKERS), job="busy_jobs:csvjob", env=listener_env)
            results[name] = measure(name, listener, busy, load, warm)
        cert.close()

    s, b = results["snsd"], results["baseline"]
    print(
        f"busy | c=32 while 10 jobs run ({args.size} each, snsd --workers {args.snsd_workers}, warm {args.warm}): "
        f"snsd {s.rate:.0f}/s p50 {s.pct(0.5):.1f} p99 {s.pct(0.99):.1f}ms; "
        f"baseline {b.rate:.0f}/s p50 {b.pct(0.5):.1f} p99 {b.pct(0.99):.1f}ms; "
        f"p99 snsd/baseline {s.pct(0.99) / b.pct(0.99):.2f}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
