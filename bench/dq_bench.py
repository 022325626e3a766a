"""Benchmark the data-quality job against S3 (LocalStack by default).

    python bench/dq_bench.py                       # 1 GiB, LocalStack at $AWS_ENDPOINT_URL or :4566
    python bench/dq_bench.py --size 64MB --endpoint-url http://127.0.0.1:4599

Generates CSV data, uploads it with a streaming multipart upload (the data never sits in memory whole),
then measures, in one process:
  1. the job (pyarrow) on one object: MB/s, rows/s;
  2. a plain ``csv``-module implementation of the same six rules, streaming the same object: the ratio;
  3. four jobs at once on four objects in a ThreadPoolExecutor(4): does the pool scale?
and prints the process's peak RSS.  ``--job-processes N`` runs every job as the daemon does by default,
in N worker processes (``snsd.dq.processes.ProcessPoolJob``) called from the threads; ``--small N``
adds a run of N tiny objects from ``--parallel`` threads, whose jobs per second measure the cost of
handing a job to a worker process and back rather than pyarrow's speed.  If no S3 endpoint answers
it starts LocalStack via ``snsd_devtools.localstack.ensure_localstack``.
"""

from __future__ import annotations

import argparse
import codecs
import csv
import os
import re
import resource
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import boto3
from botocore.config import Config

from snsd.dq import DataQualityJob, parse_rules
from snsd.records import S3ObjectRecord

BUCKET = "dq-bench"
RULES = """
- name: bench
  key: "bench/*.csv"
  schema:
    fields:
      - {name: id, type: integer, constraints: {required: true, minimum: 0}}
      - {name: email, type: string, constraints: {pattern: "[a-z0-9.]+@[a-z0-9.]+"}}
      - {name: amount, type: number, constraints: {maximum: 1000000}}
      - {name: status, type: string, constraints: {enum: [new, paid, shipped, cancelled]}}
      - {name: created, type: date}
      - {name: note, type: string}
"""
STATUSES = ("new", "paid", "shipped", "cancelled")
PART = 16 << 20


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]i?B?|B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 64MB, 1GiB)")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper().rstrip("B").rstrip("I")
    return int(number * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit])


def generate(size: int, seed: int = 0):
    """Yield CSV chunks of about PART bytes until ``size`` bytes were produced; return nothing more."""
    yield b"id,email,amount,status,created,note\n"
    produced, i = 0, seed * 10_000_000_000
    while produced < size:
        lines = []
        for _ in range(50_000):
            lines.append(
                f"{i},user{i % 100003}@example.com,{(i * 37) % 100000 / 100:.2f},{STATUSES[i % 4]},"
                f"2024-{1 + i % 12:02d}-{1 + i % 28:02d},order note {i % 997}\n"
            )
            i += 1
        chunk = "".join(lines).encode()
        produced += len(chunk)
        yield chunk


def upload(s3, key: str, size: int, seed: int) -> int:
    upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key=key, ContentType="text/csv")["UploadId"]
    parts, buffer, total = [], bytearray(), 0

    def flush():
        nonlocal buffer
        number = len(parts) + 1
        etag = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number, Body=bytes(buffer))["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
        buffer = bytearray()

    for chunk in generate(size, seed):
        buffer += chunk
        total += len(chunk)
        if len(buffer) >= PART:
            flush()
    if buffer:
        flush()
    s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
    return total


class RangedBody:
    """Streams an object as successive 64 MiB range GETs: the baseline reads so slowly that LocalStack
    resets one long-lived connection after a couple of minutes."""

    def __init__(self, s3, key: str, step: int = 64 << 20):
        self._s3, self._key, self._step = s3, key, step
        self._size = s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
        self._pos = 0
        self._body = None

    def read(self, n: int = -1) -> bytes:
        while self._pos < self._size:
            if self._body is None:
                end = min(self._pos + self._step, self._size) - 1
                self._body = self._s3.get_object(Bucket=BUCKET, Key=self._key, Range=f"bytes={self._pos}-{end}")["Body"]
            data = self._body.read(n if n and n > 0 else None)
            if data:
                self._pos += len(data)
                return data
            self._body = None
        return b""


def csv_baseline(s3, key: str) -> dict:
    """The same six rules in plain Python, streaming the same object."""
    text = codecs.getreader("utf-8")(RangedBody(s3, key))
    reader = csv.reader(text)
    header = next(reader)
    idx = {name: header.index(name) for name in header}
    email = re.compile(r"^(?:[a-z0-9.]+@[a-z0-9.]+)$")
    statuses = set(STATUSES)
    failures = dict.fromkeys(["id", "email", "amount", "status", "created"], 0)
    rows = 0
    for row in reader:
        rows += 1
        try:
            if int(row[idx["id"]]) < 0:
                failures["id"] += 1
        except ValueError:
            failures["id"] += 1
        if not email.match(row[idx["email"]]):
            failures["email"] += 1
        try:
            if float(row[idx["amount"]]) > 1000000:
                failures["amount"] += 1
        except ValueError:
            failures["amount"] += 1
        if row[idx["status"]] not in statuses:
            failures["status"] += 1
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", row[idx["created"]]):
            failures["created"] += 1
    return {"rows": rows, "failures": failures}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def reachable(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
        return True
    except urllib.error.HTTPError:
        return True  # S3 answered, with an error: it is there
    except OSError:
        return False


def small_jobs_per_second(s3, job, count: int, threads: int) -> None:
    """``count`` jobs on one tiny object from ``threads`` threads (after one warm-up job per thread)."""
    key = "bench/small.csv"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"id,email,amount,status,created,note\n1,a@b.c,1.5,new,2024-01-01,x\n")
    record = S3ObjectRecord(bucket=BUCKET, key=key)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(job, [record] * threads))
        started = time.monotonic()
        results = list(pool.map(job, [record] * count))
        wall = time.monotonic() - started
    assert all(r["rows"] == 1 for r in results)
    print(f"{count} small jobs from {threads} threads in {wall:.2f} s = {count / wall:.0f} jobs/s", flush=True)
    s3.delete_object(Bucket=BUCKET, Key=key)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=1 << 30, help="object size (default 1GiB)")
    parser.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"))
    parser.add_argument("--parallel", type=int, default=4, help="objects for the concurrency run (0 skips it)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--job-processes", type=int, default=0, help="jobs in N worker processes (0: threads)")
    parser.add_argument("--small", type=int, default=0, help="also run N tiny objects and report jobs/s")
    args = parser.parse_args(argv)
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(name, value)

    with ExitStack() as stack:
        url = args.endpoint_url.rstrip("/")
        if not reachable(url):
            try:
                from snsd_devtools.localstack import ensure_localstack
            except ImportError:
                print(
                    f"dq_bench: no S3 endpoint answers at {url}; start LocalStack or pass --endpoint-url",
                    file=sys.stderr,
                )
                return 2
            url = stack.enter_context(ensure_localstack(url))
        os.environ["AWS_ENDPOINT_URL"] = url
        s3 = boto3.client("s3", config=Config(retries={"max_attempts": 3}))
        try:
            s3.create_bucket(Bucket=BUCKET)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        objects = max(1, args.parallel)
        print(f"endpoint {url}; uploading {objects} x {args.size / 1e6:.0f} MB ...", flush=True)
        keys = []
        for n in range(objects):
            key = f"bench/{args.size}-{n}.csv"
            started = time.monotonic()
            total = upload(s3, key, args.size, seed=n)
            keys.append(key)
            print(f"  {key}: {total / 1e6:.0f} MB in {time.monotonic() - started:.1f} s", flush=True)

        rulebook = parse_rules(RULES, "bench-rules.yaml")
        if args.job_processes:
            from snsd.dq.processes import ProcessPoolJob

            job = ProcessPoolJob(rulebook, args.job_processes)
            stack.callback(job.close)
        else:
            job = DataQualityJob(rulebook)
        records = [S3ObjectRecord(bucket=BUCKET, key=k) for k in keys]

        started = time.monotonic()
        result = job(records[0])
        elapsed = time.monotonic() - started
        failed = [c for c in result["checks"] if not c["passed"]]
        mbps = result["bytes"] / 1e6 / elapsed
        print(
            f"job (pyarrow): {result['bytes'] / 1e6:.0f} MB, {result['rows']} rows in {elapsed:.2f} s = "
            f"{mbps:.0f} MB/s, {result['rows'] / elapsed / 1e6:.2f} M rows/s; verdict {result['verdict']}, "
            f"{len(result['checks'])} checks, {len(failed)} failed; peak RSS so far {peak_rss_mb():.0f} MB",
            flush=True,
        )

        if not args.skip_baseline:
            started = time.monotonic()
            baseline = csv_baseline(s3, keys[0])
            base_elapsed = time.monotonic() - started
            assert baseline["rows"] == result["rows"], (baseline["rows"], result["rows"])
            print(
                f"baseline (csv module): {baseline['rows']} rows in {base_elapsed:.2f} s = "
                f"{result['bytes'] / 1e6 / base_elapsed:.0f} MB/s; job is {base_elapsed / elapsed:.1f}x faster",
                flush=True,
            )

        if args.parallel > 1:
            with ThreadPoolExecutor(args.parallel) as pool:
                started = time.monotonic()
                results = list(pool.map(job, records))
                wall = time.monotonic() - started
            total_bytes = sum(r["bytes"] for r in results)
            print(
                f"{args.parallel} jobs at once: {total_bytes / 1e6:.0f} MB in {wall:.2f} s = "
                f"{total_bytes / 1e6 / wall:.0f} MB/s aggregate ({total_bytes / 1e6 / wall / mbps:.2f}x one job)",
                flush=True,
            )
        if args.small:
            small_jobs_per_second(s3, job, args.small, max(1, args.parallel))
        print(f"peak RSS {peak_rss_mb():.0f} MB")
        for key in keys:
            s3.delete_object(Bucket=BUCKET, Key=key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
