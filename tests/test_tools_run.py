"""`python -m snsd_devtools.run` (what `make run` runs) as a real process, against a real LocalStack.

The happy path (wire, confirm, stop on SIGTERM) is in ``test_e2e_localstack``; these are the ways a
run must not leave anything behind or claim a daemon that is not its own: a hangup (the terminal or
SSH session closing), a port something else answers on, and a daemon that exits during startup.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from snsd_devtools import localstack as ls
from tests import localstack_fixtures
from tests.process_helpers import poll_until
from tests.test_tools_localstack import ConfirmingListener, listening_addresses

pytestmark = pytest.mark.localstack

localstack_url = localstack_fixtures.localstack_url
aws_env = localstack_fixtures.aws_env

BANNER = "snsd is running at"


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state, ppid, pgrp, ...), or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def children(pid: int) -> dict[int, str]:
    """The live children of ``pid``, each with its start time (so a reused pid is not mistaken for it)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields and fields[1] == str(pid) and fields[0] != "Z":
                found[int(entry.name)] = fields[19]
    return found


def alive(pid: int, started: str) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and fields[19] == started


class Run:
    """``python -m snsd_devtools.run`` in a session of its own, as ``setsid make run`` would be."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str]):
        self.stdout_path = tmp_path / "run.out"
        self.stderr_path = tmp_path / "run.err"
        command = [sys.executable, "-m", "snsd_devtools.run", "--results", str(tmp_path / "results.jsonl")]
        command += ["--spool", str(tmp_path / "spool.sqlite3"), *args]
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
            )
        self.started: dict[int, str] = {}

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_banner_or_exit(self, timeout: float = 120.0) -> None:
        poll_until(
            lambda: "Upload a file" in self.output() or self.process.poll() is not None,
            timeout,
            "the banner or the run's exit",
            self.output,
        )

    def cleanup(self) -> None:
        """Stop the run, then whatever it started that outlived it (what the old run.py left behind)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            survivors = [pid for pid, started in self.started.items() if alive(pid, started)]
            for pid in survivors:  # each leads a session (and so a process group) of its own
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, sig)
            with contextlib.suppress(AssertionError):
                poll_until(lambda pids=survivors: not any(alive(p, self.started[p]) for p in pids), 30, "survivors")


def own_localstack_env(port: int) -> dict[str, str]:
    """Nothing answers at $LOCALSTACK_URL, so the run starts (and must stop) a LocalStack on ``port``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["LOCALSTACK_URL"] = f"http://127.0.0.1:{port}"
    return env


def test_a_hangup_stops_the_daemon_and_the_localstack_the_run_started(tmp_path):
    """`setsid make run &` then `kill -HUP -- -PGID`: nothing may survive with PPID 1.  (With JSON
    logs asked for in the shell: the run still reads snsd's text line that says it is listening.)"""
    ls_port, port = ls.free_port(), ls.free_port()
    run = Run(tmp_path, "--port", str(port), env={**own_localstack_env(ls_port), "SNSD_LOG_FORMAT": "json"})
    try:
        run.wait_banner_or_exit()
        assert run.process.poll() is None, run.output()
        assert f"{BANNER} http://127.0.0.1:{port}" in run.output()
        run.started = children(run.process.pid)
        assert len(run.started) == 2, (run.started, run.output())  # LocalStack and twistd
        assert listening_addresses(ls_port) and listening_addresses(port)

        os.killpg(run.process.pid, signal.SIGHUP)  # the run's process group, as a closing terminal does
        code = run.process.wait(120)

        assert code == 0, run.output()
        assert "Server Shut Down." in run.output()  # snsd stopped gracefully, not killed
        poll_until(
            lambda: not any(alive(pid, started) for pid, started in run.started.items()),
            10,
            "the run's children to be gone",
            run.output,
        )
        assert listening_addresses(port) == set()
        assert listening_addresses(ls_port) == set()
    finally:
        run.cleanup()


def test_a_port_answered_by_another_snsd_fails_without_the_banner(tmp_path, localstack_url, aws_env):
    with ConfirmingListener() as fake:  # an snsd an earlier run left on the port
        run = Run(tmp_path, "--port", str(fake.port), env={**os.environ, **aws_env})
        try:
            run.wait_banner_or_exit()
            code = run.process.poll()
            assert BANNER not in run.output() and "confirmed by snsd" not in run.output()
            assert code == 1, run.output()
            (error,) = [line for line in run.stderr().splitlines() if line.startswith("snsd-run:")]
            assert f"127.0.0.1:{fake.port}" in error and "listen" in error.lower(), error
        finally:
            run.cleanup()
    assert ls.is_healthy(localstack_url)  # reused, so left running


def test_a_daemon_that_exits_during_startup_is_reported_with_its_output_and_localstack_stopped(tmp_path):
    ls_port, port = ls.free_port(), ls.free_port()
    missing = tmp_path / "no-such-rules.yaml"
    run = Run(tmp_path, "--port", str(port), "--rules", str(missing), env=own_localstack_env(ls_port))
    try:
        code = run.process.wait(120)
        assert code == 1, run.output()
        assert BANNER not in run.output()
        (error,) = [line for line in run.stderr().splitlines() if line.startswith("snsd-run:")]
        assert error.startswith(f"snsd-run: snsd exited with status 1 before listening on 127.0.0.1:{port}"), error
        assert "cannot read rules file" in error, error  # the tail of snsd's own output, on the same line
        assert listening_addresses(ls_port) == set()  # the LocalStack this run started is stopped
        assert not ls.is_healthy(f"http://127.0.0.1:{ls_port}", timeout=1.0)
    finally:
        run.cleanup()
