"""The one-command run: LocalStack, snsd (dry run, signatures verified) and the wiring between them.

    python -m snsd.tools.run        (what `make run` does)

1. makes LocalStack reachable (reusing a healthy one at $LOCALSTACK_URL, else starting one on the host);
2. starts ``twistd -n snsd`` in dry-run mode with LocalStack's host trusted, a file spool, results to
   ``./dry_run_results.jsonl``;
3. wires bucket ``incoming`` -> topic ``snsd-uploads`` -> snsd and waits until snsd has confirmed the
   subscription;
4. prints how to upload a file, and runs until Ctrl-C or SIGTERM, then stops snsd (gracefully) and the
   LocalStack it started.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from snsd.tools.localstack import LocalStackError, NoSuitablePython, aws_environment, ensure_localstack
from snsd.tools.wire import wire


class _Stop(Exception):
    pass


def _stop(signum, frame):
    raise _Stop()


def _wait_ready(url: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"snsd exited with status {process.returncode}; see its output above")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url + "/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        time.sleep(0.2)
    raise SystemExit(f"snsd did not become ready at {url} within {timeout:.0f}s")


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

    # Both stop the same way; SIGINT set explicitly because a shell's background job starts with it ignored.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    twistd = str(Path(sys.executable).with_name("twistd"))
    try:
        with ensure_localstack() as localstack:
            env = aws_environment(localstack)
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
            ]
            for host in trusted_hosts(localstack):
                command += ["--trusted-host", host]
            if args.rules:
                command += ["--rules", args.rules]
            # Its own session: Ctrl-C reaches only this process, which then stops snsd once, with
            # SIGTERM, and waits for its drain (a terminal's SIGINT would also hit twistd directly).
            daemon = subprocess.Popen(command, env=env, start_new_session=True)
            try:
                listener = f"http://127.0.0.1:{args.port}"
                _wait_ready(listener, daemon)
                try:
                    wiring = wire(localstack, listener + "/", args.bucket, args.topic, wait_confirmed_seconds=30)
                except TimeoutError as e:
                    print(f"snsd-run: {e}; see snsd's log above", file=sys.stderr)
                    return 1
                print(_next_steps(localstack, listener, wiring, args), flush=True)
                while daemon.poll() is None:
                    time.sleep(0.5)
                return daemon.returncode
            finally:
                _stop_daemon(daemon)
    except _Stop:
        return 0
    except NoSuitablePython as e:
        print(f"snsd-run: {e}", file=sys.stderr)
        return 2
    except LocalStackError as e:
        print(f"snsd-run: {e}", file=sys.stderr)
        return 1


def _stop_daemon(daemon: subprocess.Popen) -> None:
    """SIGTERM snsd once and wait for its drain; a second Ctrl-C meanwhile must not cut it short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
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
Ctrl-C stops snsd (draining running jobs) and the LocalStack this command started.
"""


if __name__ == "__main__":
    sys.exit(main())
