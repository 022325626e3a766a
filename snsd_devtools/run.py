"""The one-command run: LocalStack, snsd (dry run, signatures verified) and the wiring between them.

    python -m snsd_devtools.run        (what `make run` does)

1. makes LocalStack reachable (reusing a healthy one at $LOCALSTACK_URL, else starting one on the host);
2. starts ``twistd -n snsd`` in dry-run mode with LocalStack's host trusted, a file spool, results to
   ``./dry_run_results.jsonl``;
3. wires bucket ``incoming`` -> topic ``snsd-uploads`` -> snsd and waits until snsd has confirmed the
   subscription;
4. prints how to upload a file, and runs until Ctrl-C, SIGTERM or SIGHUP (the terminal or SSH session
   closing), then stops snsd (gracefully) and the LocalStack it started.

The banner appears only once this run's own snsd has said it is listening on the port: something else
answering there (say an snsd left over from an earlier run) must not pass for it.  If snsd exits or
cannot listen during startup, this prints one line with the end of its output and exits with 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from pathlib import Path
from urllib.parse import urlsplit

from snsd.tools.wire import wire
from snsd_devtools.localstack import LocalStackError, NoSuitablePython, aws_environment, ensure_localstack

# The signals that end a run, all the same way.  SIGINT is set explicitly because a shell's background
# job starts with it ignored; SIGHUP is what a closing terminal or SSH session sends, and it would not
# reach snsd or LocalStack on its own: both run in sessions of their own.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# snsd.daemon's line once its port is open, and Twisted's (or snsd's) when it cannot be.
_LISTENING = re.compile(r"\blistening on (\S+):(\d+)\s*$")
_CANNOT_LISTEN = re.compile(r"(?i)\b(?:couldn't|could not|cannot) listen\b")


class _Stop(Exception):
    pass


class StartupFailed(Exception):
    """snsd exited, could not listen, or did not become ready: the message says which, with its output."""


def _stop(signum, frame):
    raise _Stop()


class DaemonOutput:
    """Copies snsd's output to ours line by line, keeping its tail and noting whether it listens."""

    def __init__(self, stream, port: int, out=None, keep: int = 20):
        self._stream = stream
        self._port = port
        self._out = out
        self._lines: deque[str] = deque(maxlen=keep)
        self._changed = threading.Condition()
        self.listening: tuple[str, int] | None = None
        self.cannot_listen: str | None = None
        self.closed = False
        self._thread = threading.Thread(target=self._relay, name="snsd-output", daemon=True)
        self._thread.start()

    def _relay(self) -> None:
        out = self._out or sys.stdout
        for raw in iter(self._stream.readline, b""):
            text = raw.decode(errors="replace")
            # Our terminal may be gone (a hangup): keep reading, or snsd would block on a full pipe.
            with contextlib.suppress(OSError, ValueError):
                out.write(text)
                out.flush()
            self._saw(text.strip())
        self._stream.close()
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def _saw(self, line: str) -> None:
        with self._changed:
            if line:
                self._lines.append(line)
            found = _LISTENING.search(line)
            if found and self.listening is None and self._port in (0, int(found.group(2))):
                self.listening = (found.group(1), int(found.group(2)))
            elif self.cannot_listen is None and _CANNOT_LISTEN.search(line):
                self.cannot_listen = line
            self._changed.notify_all()

    def wait(self, daemon: subprocess.Popen, timeout: float) -> None:
        """Until snsd's next line (or its exit, once its output has ended), at most ``timeout`` seconds."""
        with self._changed:
            if not self.closed:
                self._changed.wait(timeout)
                return
        with contextlib.suppress(subprocess.TimeoutExpired):
            daemon.wait(timeout)

    def finish(self, timeout: float = 5.0) -> None:
        """Wait for the rest of the output of a process that has exited."""
        self._thread.join(timeout)

    def tail(self, lines: int = 3) -> str:
        with self._changed:
            last = list(self._lines)[-lines:]
            if self.cannot_listen and self.cannot_listen not in last:
                last.insert(0, self.cannot_listen)
        return " | ".join(last) or "(no output)"


def wait_listening(daemon: subprocess.Popen, output: DaemonOutput, port: int, timeout: float = 30.0) -> int:
    """The port snsd (this very process) says it listens on; :class:`StartupFailed` if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if output.listening is not None:
            return output.listening[1]
        if daemon.poll() is not None:
            output.finish()
            if output.listening is None:
                raise StartupFailed(
                    f"snsd exited with status {daemon.returncode} before listening on 127.0.0.1:{port}; "
                    f"its last output: {output.tail()}"
                )
            continue
        if output.cannot_listen is not None:
            raise StartupFailed(f"snsd cannot listen on 127.0.0.1:{port}: {output.cannot_listen}")
        if time.monotonic() >= deadline:
            raise StartupFailed(
                f"snsd did not say it was listening on 127.0.0.1:{port} within {timeout:.0f}s; "
                f"its last output: {output.tail()}"
            )
        output.wait(daemon, min(0.2, max(0.0, deadline - time.monotonic())))


def _wait_ready(url: str, process: subprocess.Popen, output: DaemonOutput, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output.finish()
            raise StartupFailed(f"snsd exited with status {process.returncode}; its last output: {output.tail()}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url + "/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        output.wait(process, 0.2)
    raise StartupFailed(f"snsd did not become ready at {url} within {timeout:.0f}s; its last output: {output.tail()}")


def _port_from_env(value: str) -> int:
    """SNSD_PORT as a number: ``8081``, or ``tcp:8081`` / ``tcp:8081:interface=...`` as twistd takes it."""
    try:
        return int(value.removeprefix("tcp:").split(":")[0])
    except ValueError:
        raise SystemExit(f"snsd-run: SNSD_PORT must be a port number or tcp:N, not {value!r}") from None


def trusted_hosts(localstack_url: str) -> list[str]:
    """The hosts LocalStack may put in its SigningCertURL and SubscribeURL."""
    port = urlsplit(localstack_url).port or 4566
    host = urlsplit(localstack_url).hostname or "127.0.0.1"
    return sorted({f"{host}:{port}", f"127.0.0.1:{port}", f"localhost:{port}", f"localhost.localstack.cloud:{port}"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="snsd-run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=_port_from_env(os.environ.get("SNSD_PORT", "8080")))
    parser.add_argument("--bucket", default="incoming")
    parser.add_argument("--topic", default="snsd-uploads")
    parser.add_argument("--results", default=os.environ.get("SNSD_RESULTS_PATH", "./dry_run_results.jsonl"))
    parser.add_argument("--spool", default=os.environ.get("SNSD_SPOOL_PATH", "./snsd-spool.sqlite3"))
    parser.add_argument("--rules", default=os.environ.get("SNSD_RULES"))
    args = parser.parse_args(argv)

    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop)
    twistd = str(Path(sys.executable).with_name("twistd"))
    try:
        with ensure_localstack() as localstack:
            # This run reads snsd's "listening on HOST:PORT" line: text, at info, whatever the shell set.
            env = {**aws_environment(localstack), "SNSD_LOG_FORMAT": "text", "SNSD_LOG_LEVEL": "info"}
            command = [
                twistd,
                "-n",
                "--pidfile=",
                "snsd",
                "--port",
                f"tcp:{args.port}:interface=127.0.0.1",
                "--dry-run",
                "--results",
                args.results,
                "--spool",
                args.spool,
                "--breaker-mode",
                "spool",
                # Development: /breaker and /metrics on the one port this run prints.
                "--admin-on-main-port",
            ]
            for host in trusted_hosts(localstack):
                command += ["--trusted-host", host]
            if args.rules:
                command += ["--rules", args.rules]
            # Its own session: Ctrl-C (or a hangup) reaches only this process, which then stops snsd
            # once, with SIGTERM, and waits for its drain (a terminal's SIGINT would also hit twistd
            # directly).  Its output comes through us, so we can tell that it is listening.
            daemon = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            output = DaemonOutput(daemon.stdout, args.port)
            try:
                port = wait_listening(daemon, output, args.port)
                listener = f"http://127.0.0.1:{port}"
                _wait_ready(listener, daemon, output)
                try:
                    wiring = wire(localstack, listener + "/", args.bucket, args.topic, wait_confirmed_seconds=30)
                except TimeoutError as e:
                    print(f"snsd-run: {e}; see snsd's log above", file=sys.stderr)
                    return 1
                if daemon.poll() is not None:
                    output.finish()
                    raise StartupFailed(
                        f"snsd exited with status {daemon.returncode} while being wired; "
                        f"its last output: {output.tail()}"
                    )
                print(_next_steps(localstack, listener, wiring, args), flush=True)
                while daemon.poll() is None:
                    time.sleep(0.5)
                return daemon.returncode
            finally:
                _stop_daemon(daemon)
                output.finish()
    except _Stop:
        return 0
    except StartupFailed as e:
        print(f"snsd-run: {e}", file=sys.stderr, flush=True)
        return 1
    except NoSuitablePython as e:
        print(f"snsd-run: {e}", file=sys.stderr)
        return 2
    except LocalStackError as e:
        print(f"snsd-run: {e}", file=sys.stderr)
        return 1


def _stop_daemon(daemon: subprocess.Popen) -> None:
    """SIGTERM snsd once and wait for its drain; a second Ctrl-C (or a hangup) meanwhile must not cut it short."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(90)  # longer than the default 30s drain timeout
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def _next_steps(localstack: str, listener: str, wiring, args) -> str:
    results = os.path.abspath(args.results)
    return f"""
snsd is running at {listener} (dry run, signatures verified against LocalStack)
  topic         {wiring.topic_arn}
  subscription  {wiring.subscription_arn} (confirmed by snsd)
  results       {results}

Upload a file to s3://{wiring.bucket}/ to run the data-quality job on it:
  aws --endpoint-url {localstack} s3 cp data.csv s3://{wiring.bucket}/data.csv
or without the aws CLI:
  AWS_ENDPOINT_URL={localstack} AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 \\
    .venv/bin/python -c "import boto3; boto3.client('s3').upload_file('data.csv', '{wiring.bucket}', 'data.csv')"
or publish the sample event.json to the topic (its object does not exist: expect an error line):
  AWS_ENDPOINT_URL={localstack} .venv/bin/python -m snsd.tools.publish --topic-arn {wiring.topic_arn}

Then: tail -f {results}
      curl {listener}/breaker    curl {listener}/metrics
Ctrl-C (or closing this terminal) stops snsd (draining running jobs) and the LocalStack this command started.
"""


if __name__ == "__main__":
    sys.exit(main())
