"""The whole loop on LocalStack: upload N CSV files, time until the last verdict.

For each listener in turn: wire bucket -> S3 notification -> SNS topic -> HTTP subscription (the
listener confirms it), upload N objects of S MB, and wait until every object has a result line.
snsd runs its pyarrow data-quality job with signatures verified and the durable spool; the stdlib
baseline runs the same rules in a plain ``csv``-module job.

    python bench/pipeline.py [-n 200] [--size 5MiB]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import result_lines, start_baseline, start_snsd  # noqa: E402
from busy import bench_bucket, dq_workdir  # noqa: E402
from dq_bench import BUCKET, generate, parse_size  # noqa: E402

from snsd.tools.wire import wire  # noqa: E402
from snsd_devtools.localstack import aws_environment, ensure_localstack  # noqa: E402


def run(name, listener, s3, url, body, n, deadline_seconds=900):
    try:
        wire(
            url,
            f"http://127.0.0.1:{listener.port}/",
            bucket=BUCKET,
            topic=f"pipeline-{name}",
            wait_confirmed_seconds=30,
        )
        keys = [f"bench/pipe-{name}/{i:05d}.csv" for i in range(n)]
        started = time.monotonic()
        with ThreadPoolExecutor(8) as uploads:
            list(uploads.map(lambda key: s3.put_object(Bucket=BUCKET, Key=key, Body=body), keys))
        uploaded = time.monotonic() - started
        wanted = set(keys)
        deadline = started + deadline_seconds
        while time.monotonic() < deadline:
            done = {line["key"] for line in result_lines(listener.workdir / "results.jsonl")} & wanted
            if len(done) == n:
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        lines = [line for line in result_lines(listener.workdir / "results.jsonl") if line["key"] in wanted]
        ok = sum(1 for line in lines if line["status"] == "ok")
        print(
            f"  {name:8s} {len(done)}/{n} results ({ok} ok) in {elapsed:.1f}s "
            f"(uploads {uploaded:.1f}s): {len(done) / elapsed:.2f} files/s",
            flush=True,
        )
        return len(done) / elapsed
    finally:
        listener.stop(timeout=10)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=200, help="files per listener (default 200)")
    parser.add_argument("--size", default="5MiB", help="size of each file (default 5MiB)")
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    body = b""
    for chunk in generate(size):
        body += chunk
        if len(body) >= size:
            break

    with ensure_localstack() as url:
        env = aws_environment(url)
        s3 = bench_bucket(url)
        rates = {}
        for name in ("snsd", "baseline"):
            wd, listener_env = dq_workdir(f"pipeline-{name}", env)
            if name == "snsd":
                port = url.rsplit(":", 1)[1].strip("/")
                listener = start_snsd(
                    wd,
                    "--breaker-mode",
                    "spool",
                    "--topic-arn",
                    "arn:aws:sns:us-east-1:000000000000:pipeline-snsd",
                    "--rules",
                    str(wd / "rules.yaml"),
                    trusted_host=f"127.0.0.1:{port}",
                    job=None,  # the built-in data-quality job (snsd.dq), as deployed
                    env=listener_env,
                )
            else:
                listener = start_baseline(wd, job="busy_jobs:csvjob", env=listener_env)
            rates[name] = run(name, listener, s3, url, body, args.n)

    print(
        f"pipeline | {args.n} x {args.size}: snsd {rates['snsd']:.2f} files/s, baseline "
        f"{rates['baseline']:.2f} files/s, snsd/baseline {rates['snsd'] / rates['baseline']:.2f}x",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
