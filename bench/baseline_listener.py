"""The design snsd replaces, written honestly with the standard library.

``ThreadingHTTPServer`` (one thread per connection, HTTP/1.1 keep-alive) parses the SNS
envelope and the S3 event and hands each record to a ``ThreadPoolExecutor`` of
``SNS_WORKER_MAX`` workers, guarded by an in-memory circuit breaker.  No signature checks,
no spool: the executor's unbounded in-memory queue is the only buffer, so anything queued
when the process stops is gone.  Results are appended to a JSON-lines file.

    python bench/baseline_listener.py --port 0 --job bench_jobs:trivial --results out.jsonl
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote_plus


@dataclass(frozen=True)
class Record:
    bucket: str
    key: str
    size: int | None
    etag: str | None
    message_id: str
    topic_arn: str


class Breaker:
    """Opens after ``max_failures`` consecutive failures, for ``cooldown`` seconds."""

    def __init__(self, max_failures: int, cooldown: float):
        self.max_failures = max_failures
        self.cooldown = cooldown
        self.failures = 0
        self.open_until = 0.0
        self.lock = threading.Lock()

    def allows(self) -> bool:
        with self.lock:
            return time.monotonic() >= self.open_until

    def record(self, ok: bool) -> None:
        with self.lock:
            if ok:
                self.failures = 0
                return
            self.failures += 1
            if self.failures >= self.max_failures:
                self.open_until = time.monotonic() + self.cooldown
                self.failures = 0


class Listener:
    def __init__(self, job, workers: int, results: str, breaker: Breaker):
        self.job = job
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="job")
        self.breaker = breaker
        self.results = open(results, "a", buffering=1)  # noqa: SIM115 - process-long
        self.results_lock = threading.Lock()

    def run(self, record: Record) -> None:
        started = time.time()
        try:
            result, status, error = self.job(record), "ok", None
        except Exception as e:
            result, status, error = None, "error", f"{type(e).__name__}: {e}"
        self.breaker.record(status == "ok")
        line = {
            "bucket": record.bucket,
            "key": record.key,
            "message_id": record.message_id,
            "status": status,
            "result": result,
            "error": error,
            "duration_ms": round((time.time() - started) * 1000, 3),
        }
        with self.results_lock:
            self.results.write(json.dumps(line) + "\n")

    def handle(self, body: bytes) -> tuple[int, dict]:
        try:
            envelope = json.loads(body)
            kind = envelope["Type"]
        except (ValueError, KeyError, TypeError):
            return 400, {"error": "bad envelope"}
        if kind == "SubscriptionConfirmation":
            urllib.request.urlopen(envelope["SubscribeURL"], timeout=10).read()
            return 200, {"status": "confirmed"}
        if kind != "Notification":
            return 200, {"status": "ok"}
        try:
            message = json.loads(envelope["Message"])
            records = [
                Record(
                    r["s3"]["bucket"]["name"],
                    unquote_plus(r["s3"]["object"]["key"]),
                    r["s3"]["object"].get("size"),
                    r["s3"]["object"].get("eTag"),
                    envelope["MessageId"],
                    envelope["TopicArn"],
                )
                for r in message.get("Records", [])
                if r.get("eventName", "").startswith("ObjectCreated")
            ]
        except (ValueError, KeyError, TypeError, AttributeError):
            return 200, {"status": "ignored"}
        if not self.breaker.allows():
            return 503, {"error": "circuit breaker open"}
        for record in records:
            self.executor.submit(self.run, record)
        return 200, {"status": "accepted", "jobs": len(records)}


def make_handler(listener: Listener):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as SNS and the load generator use it
        # Headers and body go out in two writes: without this, Nagle + delayed ACK add 40 ms to
        # every keep-alive answer, which would make the baseline look far worse than it is.
        disable_nagle_algorithm = True

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            status, answer = listener.handle(self.rfile.read(length))
            body = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass  # no access log line per request (snsd writes none either)

    return Handler


def load_job(spec: str):
    module, _, name = spec.partition(":")
    target = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("SNS_WORKER_MAX", "10")))
    parser.add_argument("--job", required=True)
    parser.add_argument("--results", default="baseline_results.jsonl")
    parser.add_argument("--breaker-max-failures", type=int, default=5)
    parser.add_argument("--breaker-cooldown", type=float, default=60.0)
    args = parser.parse_args()
    listener = Listener(
        load_job(args.job), args.workers, args.results, Breaker(args.breaker_max_failures, args.breaker_cooldown)
    )
    # socketserver's default listen backlog is 5: 32 connections opened at once would see SYNs
    # dropped and 1 s retransmits.  Any real deployment raises it; so does the baseline.
    ThreadingHTTPServer.request_queue_size = 128
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(listener))
    server.daemon_threads = True
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)

    def stop(signum, frame):
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()
    queued = listener.executor._work_queue.qsize()
    listener.executor.shutdown(wait=True, cancel_futures=True)
    print(f"stopped; {queued} queued jobs dropped", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
