"""Shared parts of the benchmarks: the listeners under test, signed notifications, a certificate
server, a light multi-process HTTP load generator and process measurements.

Everything binds 127.0.0.1 and is stopped by the script that started it.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path[:0] = [str(ROOT)] if str(ROOT) not in sys.path else []

TOPIC = "arn:aws:sns:us-east-1:000000000000:snsd-bench"
LISTENING = re.compile(rb"listening on [^:\s]+:(\d+)")

# Jobs the listeners import (snsd with --job, the baseline with --job), written to each workdir.
JOBS_SOURCE = """
import time

def trivial(record):
    return {"verdict": "passed", "key": record.key}

def sleep50(record):
    time.sleep(0.05)
    return {"verdict": "passed", "key": record.key}
"""


# -- notifications ---------------------------------------------------------------------------


def s3_event(key: str, bucket: str = "incoming", size: int = 1024) -> str:
    return json.dumps(
        {
            "Records": [
                {
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "eventName": "ObjectCreated:Put",
                    "eventTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                    "s3": {
                        "bucket": {"name": bucket},
                        "object": {"key": key, "size": size, "eTag": "e", "sequencer": "01"},
                    },
                }
            ]
        }
    )


_SIGNING: dict = {}


def _sign_one(i: int) -> bytes:
    from snsd.tools.post import build_notification

    prefix, key_pem, cert_url, bucket = _SIGNING["args"]
    fields = build_notification(
        s3_event(f"{prefix}/{i:06d}.csv", bucket),
        TOPIC,
        message_id=f"{prefix}-{i}-{uuid.uuid4()}",
        sign_key_pem=key_pem,
        cert_url=cert_url,
    )
    return json.dumps(fields).encode()


def notifications(n: int, prefix: str, key_pem: bytes | None = None, cert_url: str | None = None, bucket="incoming"):
    """``n`` distinct notifications (signed when a key is given), built on every core."""
    _SIGNING["args"] = (prefix, key_pem, cert_url, bucket)
    if key_pem is None or n < 200:
        return [_sign_one(i) for i in range(n)]
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 2) as pool:
        return pool.map(_sign_one, range(n), chunksize=256)


class CertServer:
    """Serves one signing certificate over http on loopback, like an emulator's.

    ``key_size``: a smaller key signs several times faster, for senders that sign as they go
    (bench/soak.py); verifying costs snsd about the same either way."""

    def __init__(self, key_size: int = 2048):
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509 import CertificateBuilder, Name, NameAttribute, random_serial_number
        from cryptography.x509.oid import NameOID

        key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
        now = datetime.now(UTC)
        name = Name([NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        cert = (
            CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        self.key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        pem = cert.public_bytes(serialization.Encoding.PEM)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(pem)))
                self.end_headers()
                self.wfile.write(pem)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.trusted_host = f"127.0.0.1:{self.port}"
        self.cert_url = f"http://127.0.0.1:{self.port}/SimpleNotificationService-bench.pem"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


# -- the listeners -----------------------------------------------------------------------------


class Listener:
    """A listener subprocess that prints ``listening on HOST:PORT``; measured through /proc."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict | None = None):
        self.name = name
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "bench_jobs.py").write_text(JOBS_SOURCE)
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            argv,
            cwd=workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": f"{workdir}:{ROOT}", **(env or {})},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = LISTENING.search(self.log_path.read_bytes())
            if found:
                self.port = int(found.group(1))
                break
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        else:
            raise RuntimeError(f"{name} did not start:\n{self.log_path.read_text()}")
        self._wait_ready()

    def _wait_ready(self):
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as e:
                # Listeners without /readyz (floor, baseline) answer 404/405: listening is enough.
                # Only snsd's 503 (not ready yet) is worth waiting out.
                if e.code != 503:
                    return
            except OSError:
                pass
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        return process_cpu(self.process.pid)

    def rss_mb(self) -> tuple[float, float]:
        """(current, peak) resident set size in MB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        values = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return int(values["VmRSS"].split()[0]) / 1024, int(values["VmHWM"].split()[0]) / 1024

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def process_cpu(pid: int) -> float:
    return stat_cpu(Path(f"/proc/{pid}/stat"))


def stat_cpu(stat: Path) -> float:
    """CPU seconds (user + system) from a /proc ``stat`` file: a process's, or one thread's (task)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def twistd() -> str:
    return str(Path(sys.executable).with_name("twistd"))


def start_snsd(workdir: Path, *args: str, trusted_host: str | None = None, job="bench_jobs:trivial", env=None):
    argv = [
        twistd(),
        "-n",
        "--pidfile=",
        "snsd",
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--dry-run",
        "--results",
        str(workdir / "results.jsonl"),
        "--spool",
        str(workdir / "spool.sqlite3"),
        "--topic-arn",
        TOPIC,
        # job=None: snsd's built-in data-quality job (pass "--rules", path in args).
        *(("--job", job) if job is not None else ()),
        *(("--trusted-host", trusted_host) if trusted_host else ()),
        *args,
    ]
    # The admin listener on a free port: several listeners run at once (bench/ab.py), and a build
    # from before --admin-port ignores the variable.
    return Listener("snsd", argv, workdir, {"SNSD_ADMIN_PORT": "tcp:0:interface=127.0.0.1", **(env or {})})


def start_baseline(workdir: Path, *args: str, job="bench_jobs:trivial", env=None):
    argv = [
        sys.executable,
        str(BENCH / "baseline_listener.py"),
        "--port",
        "0",
        "--job",
        job,
        "--results",
        str(workdir / "results.jsonl"),
        *args,
    ]
    return Listener("baseline", argv, workdir, env)


def start_floor(workdir: Path, *args: str):
    return Listener("floor", [sys.executable, str(BENCH / "floor.py"), "--port", "0", *args], workdir)


def workdir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"snsd-bench-{name}-"))


def result_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line being written
    return out


class ResultCounter:
    """Counts the lines of a growing results file, reading only what was added since last time."""

    def __init__(self, path: Path):
        self.path = path
        self.lines = 0
        self._offset = 0

    def count(self) -> int:
        if self.path.exists():
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
            # Only whole lines: a line being written is counted once its newline lands.
            whole = data.rfind(b"\n") + 1
            self.lines += data.count(b"\n", 0, whole)
            self._offset += whole
        return self.lines

    def wait_for(self, expected: int, timeout: float = 300.0) -> float:
        """Poll until ``expected`` lines are there; the perf_counter time they were seen."""
        deadline = time.perf_counter() + timeout
        while self.count() < expected:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{self.path}: {self.lines} result lines after {timeout:.0f} s, expected {expected}")
            time.sleep(0.005)
        return time.perf_counter()


# -- the load generator ------------------------------------------------------------------------


def request_bytes(body: bytes, path: str = "/") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain; charset=UTF-8\r\n"
        f"x-amz-sns-message-type: Notification\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class _Conn(asyncio.Protocol):
    """One keep-alive connection sending its requests one after another (closed loop)."""

    def __init__(self, requests: list[bytes], done: asyncio.Future, latencies: list, statuses: dict):
        self.requests = requests
        self.done = done
        self.latencies = latencies
        self.statuses = statuses
        self.buffer = b""
        self.i = 0

    def connection_made(self, transport):
        self.transport = transport
        self._send()

    def _send(self):
        if self.i >= len(self.requests):
            self.transport.close()
            if not self.done.done():
                self.done.set_result(None)
            return
        self.started = time.perf_counter()
        self.transport.write(self.requests[self.i])

    def data_received(self, data):
        self.buffer += data
        while True:
            consumed = response_length(self.buffer)
            if consumed is None:
                return
            status = int(self.buffer[9:12])
            self.buffer = self.buffer[consumed:]
            self.latencies.append(time.perf_counter() - self.started)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.i += 1
            self._send()

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(None)
            self.statuses["dropped"] = self.statuses.get("dropped", 0) + len(self.requests) - self.i


def response_length(buffer: bytes) -> int | None:
    """The length of the first complete HTTP response in ``buffer``, or None while it is incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buffer[:end].lower()
    start = end + 4
    m = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
    if m:
        total = start + int(m.group(1))
        return total if len(buffer) >= total else None
    if b"transfer-encoding: chunked" in head:
        pos = start
        while True:
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(buffer[pos:line_end].split(b";")[0], 16)
            pos = line_end + 2 + size + 2
            if len(buffer) < pos:
                return None
            if size == 0:
                return pos
    return start


def _generator_process(port: int, requests: list[list[bytes]], conn, barrier) -> None:
    async def run():
        loop = asyncio.get_running_loop()
        latencies: list[float] = []
        statuses: dict = {}
        futures = []
        barrier.wait()
        t0 = time.perf_counter()
        for chunk in requests:
            done = loop.create_future()
            futures.append(done)
            await loop.create_connection(lambda c=chunk, d=done: _Conn(c, d, latencies, statuses), "127.0.0.1", port)
        await asyncio.gather(*futures)
        return t0, time.perf_counter(), latencies, statuses

    cpu0 = os.times()
    t0, t1, latencies, statuses = asyncio.run(run())
    cpu1 = os.times()
    conn.send((t0, t1, latencies, statuses, (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)))
    conn.close()


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies: list[float] = field(repr=False)
    statuses: dict
    generator_cpu: float  # CPU seconds used by the generator processes
    server_cpu: float
    started: float = 0.0  # perf_counter of the first request (CLOCK_MONOTONIC: the same in every process)
    sustained: float | None = None  # set by bench/load.py: requests per second until the last result

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        values = sorted(self.latencies)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    def describe(self) -> str:
        return (
            f"{self.rate:.0f} req/s p50 {self.pct(0.5):.2f} ms p99 {self.pct(0.99):.2f} ms "
            f"gen CPU {100 * self.generator_cpu / self.seconds:.0f}% "
            f"server CPU {100 * self.server_cpu / self.seconds:.0f}% statuses {self.statuses}"
        )


def run_load(port: int, bodies: list[bytes], concurrency: int, processes: int = 1, server_pid=None) -> LoadResult:
    """Send every body once over ``concurrency`` keep-alive connections from ``processes``
    generator processes; latency is per request, send to complete answer."""
    processes = max(1, min(processes, concurrency))
    requests = [request_bytes(b) for b in bodies]
    per_conn = [requests[i::concurrency] for i in range(concurrency)]
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(processes + 1)
    pipes, procs = [], []
    for p in range(processes):
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_generator_process, args=(port, per_conn[p::processes], child, barrier))
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    server_cpu0 = process_cpu(server_pid) if server_pid else 0.0
    barrier.wait()
    results = [pipe.recv() for pipe in pipes]
    server_cpu = (process_cpu(server_pid) - server_cpu0) if server_pid else 0.0
    for proc in procs:
        proc.join()
    latencies: list[float] = []
    statuses: dict = {}
    for _, _, lat, st, _ in results:
        latencies.extend(lat)
        for k, v in st.items():
            statuses[k] = statuses.get(k, 0) + v
    started = min(r[0] for r in results)
    seconds = max(r[1] for r in results) - started
    return LoadResult(len(latencies), seconds, latencies, statuses, sum(r[4] for r in results), server_cpu, started)
