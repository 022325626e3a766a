"""Run the real ``twistd -n snsd`` as a subprocess, for tests that need the whole daemon."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

TWISTD = str(Path(sys.executable).with_name("twistd"))
LISTENING = re.compile(rb"listening on [^:\s]+:(\d+)")
ADMIN_LISTENING = re.compile(rb"admin routes on [^:\s]+:(\d+)")

# A job module the daemon imports with --job; written next to each test's files.
JOBS_SOURCE = """
import os, time

def echo(record):
    return {"echo": record.key, "size": record.size}

def slow(record):
    time.sleep(float(os.environ.get("SNSD_TEST_JOB_SECONDS", "0.2")))
    return {"echo": record.key}

def missing(record):
    raise FileNotFoundError(f"no such object {record.bucket}/{record.key}")
"""


def poll_until(predicate, timeout: float, what: str, output=lambda: ""):
    """Poll ``predicate()`` until it is truthy and return its value: the code under test is
    another process, so polling its observable output is the synchronisation we have.  On
    timeout the assertion names ``what`` and shows the end of ``output()``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; output:\n{output()[-4000:]}")
        time.sleep(0.05)


class Daemon:
    """A ``twistd -n snsd`` process listening on a kernel-chosen loopback port."""

    def __init__(self, workdir: Path, *args: str, env: dict | None = None, nofile: int | None = None):
        """``nofile``: the process's file-descriptor limit (RLIMIT_NOFILE), lowered before twistd starts."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "snsd_test_jobs.py").write_text(JOBS_SOURCE)
        self.results = self.workdir / "results.jsonl"
        self.spool = self.workdir / "spool.sqlite3"
        self.log_path = self.workdir / "twistd.out"
        self.args = [
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--admin-port",
            "tcp:0:interface=127.0.0.1",
            "--dry-run",
            "--results",
            str(self.results),
            "--spool",
            str(self.spool),
            *args,
        ]
        self.env = {**os.environ, "PYTHONPATH": str(self.workdir), **(env or {})}
        self.process: subprocess.Popen | None = None
        self.nofile = nofile
        self.port: int | None = None
        self.admin_port: int | None = None  # the admin listener's (/breaker, /metrics)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Daemon:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        offset = self.log_path.stat().st_size
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "snsd", *self.args],
            cwd=self.workdir,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=None if self.nofile is None else self._lower_nofile,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"twistd exited {self.process.returncode}:\n{self.output()}")
            output = self.log_path.read_bytes()[offset:]
            found = LISTENING.search(output)
            admin = ADMIN_LISTENING.search(output)
            if admin:
                self.admin_port = int(admin.group(1))
            if found and self.get("/readyz")[0] == 200:
                self.port = int(found.group(1)) if self.port is None else self.port
                return self
            if found:
                self.port = int(found.group(1))
            time.sleep(0.05)
        raise RuntimeError(f"twistd not ready within {timeout}s:\n{self.output()}")

    def _lower_nofile(self) -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None, *, admin: bool = False
    ):
        """One request to the main port, or with ``admin=True`` to the admin listener."""
        url = f"http://127.0.0.1:{self.admin_port}" if admin else self.url
        req = urllib.request.Request(url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)
        except (ConnectionError, urllib.error.URLError):
            return None, b"", {}

    def get(self, path: str):
        if self.port is None:
            return None, b"", {}
        return self.request("GET", path)

    def admin(self, method: str, path: str):
        return self.request(method, path, admin=True)

    def post(self, body: bytes, headers: dict | None = None):
        return self.request("POST", "/", body, {"Content-Type": "text/plain; charset=UTF-8", **(headers or {})})

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        code = self.process.wait(timeout)
        self._log.close()
        self.port = self.admin_port = None
        return code

    def stop(self) -> int:
        if self.process and self.process.poll() is None:
            self.signal(signal.SIGTERM)
            return self.wait()
        return self.process.returncode if self.process else 0

    def result_lines(self) -> list[dict]:
        if not self.results.exists():
            return []
        return [json.loads(line) for line in self.results.read_text().splitlines() if line.strip()]

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "condition"):
        return poll_until(predicate, timeout, what, self.output)


def notification(message: str, message_id: str, topic_arn: str = "arn:aws:sns:us-east-1:123456789012:uploads") -> bytes:
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": message_id,
            "TopicArn": topic_arn,
            "Message": message,
            "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        }
    ).encode()
