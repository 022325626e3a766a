"""The real ``twistd`` process refuses a spool file of a newer release: one line, exit 1, the file untouched.

Apart from ``test_spool_versions.py`` because it starts a process: the spool's mutation runs
(``make mutate``) leave it out, it tests the daemon's start rather than the spool."""

import subprocess
from pathlib import Path

import pytest

from snsd import spool_schema
from tests.process_helpers import TWISTD
from tests.test_spool_versions import newer_spool


@pytest.mark.process
def test_the_daemon_refuses_a_newer_spool_with_one_line_and_exit_1(tmp_path):
    path = newer_spool(tmp_path)
    before = Path(path).read_bytes()
    run = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "snsd", "--dry-run", "--no-verify-signatures", "--spool", path,
         "--job", "snsd.jobs.head:head_object", "--port", "tcp:0:interface=127.0.0.1",
         "--admin-port", "tcp:0:interface=127.0.0.1"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert run.returncode == 1
    (line,) = [line for line in run.stdout.splitlines() if "critical" in line]
    assert f"cannot open the spool {path}: its layout is version {spool_schema.VERSION + 1}" in line
    assert "Traceback" not in run.stdout + run.stderr
    assert Path(path).read_bytes() == before
