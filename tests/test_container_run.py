"""The image, built from the Dockerfile and run for real against LocalStack on the host.

Every container runs with ``--network host`` (traffic stays on loopback) and ``--read-only`` with
a tmpfs /tmp, as the Kubernetes manifests run it, and keeps its spool and results in a folder of
the test mounted at /var/lib/snsd.  LocalStack is the session's (tests/localstack_fixtures.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest

from snsd.tools.wire import wire, wire_sqs
from snsd_devtools.localstack import free_port
from tests.container_env import FIGURES, docker

# The tests are grouped in classes that carry their marks (not a module ``pytestmark``, not
# marks on each function): only then does pytest fold their skips into one summary line.  The
# timeout is long because the first test's setup builds the base image and the image (minutes on
# a cold machine).

UID = 10001
# Runs in the container, from a folder mounted read-only: a job slow enough to be caught running.
SLOW_JOB = """
import os, time

def slow(record):
    time.sleep(float(os.environ["SNSD_TEST_JOB_SECONDS"]))
    return {"echo": record.key}
"""


class Container:
    """One ``docker run -d`` of the image, on loopback port ``port``, with ``data`` at /var/lib/snsd."""

    def __init__(self, image: str, data: Path, *args: str, env: dict | None = None, mounts=()):
        self.image, self.data, self.args = image, data, args
        self.port = free_port()
        # The admin listener (/metrics) defaults to 127.0.0.1:9090: with --network host every
        # container needs a free port of its own.
        self.admin_port = free_port()
        self.name = f"snsd-test-{uuid.uuid4().hex[:8]}"
        self.env = {
            # The image's HEALTHCHECK asks this URL: it follows --port.
            "SNSD_HEALTHCHECK_URL": f"http://127.0.0.1:{self.port}/healthz",
            **(env or {}),
        }
        self.mounts = mounts
        self.started_at = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Container:
        argv = ["run", "--detach", "--name", self.name, "--network", "host", "--read-only", "--tmpfs", "/tmp"]
        argv += ["--volume", f"{self.data}:/var/lib/snsd"]
        for source, target in self.mounts:
            argv += ["--volume", f"{source}:{target}:ro"]
        for name, value in self.env.items():
            argv += ["--env", f"{name}={value}"]
        argv += [self.image, "--port", f"tcp:{self.port}:interface=127.0.0.1"]
        argv += ["--admin-port", f"tcp:{self.admin_port}:interface=127.0.0.1", *self.args]
        self.started_at = time.monotonic()
        docker(*argv)
        return self

    def inspect(self, template: str) -> str:
        return docker("inspect", "--format", template, self.name).stdout.strip()

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def wait_healthy(self, timeout: float = 90.0) -> float:
        """Seconds from ``docker run`` until the image's own HEALTHCHECK reported healthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.inspect("{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}")
            if status == "running healthy":
                return time.monotonic() - self.started_at
            if not status.startswith("running"):
                raise AssertionError(f"container {status}:\n{self.logs()[-4000:]}")
            time.sleep(0.5)
        raise AssertionError(f"not healthy within {timeout:g}s:\n{self.logs()[-4000:]}")

    def stop(self, grace: int) -> tuple[int, float]:
        """``docker stop -t grace``: (exit code, seconds it took)."""
        started = time.monotonic()
        docker("stop", "--time", str(grace), self.name, timeout=grace + 60)
        return int(self.inspect("{{.State.ExitCode}}")), time.monotonic() - started

    def remove(self) -> None:
        docker("rm", "--force", self.name, check=False)

    def result_lines(self) -> list[dict]:
        path = self.data / "dry_run_results.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_for(self, predicate, timeout: float = 60.0, what: str = "condition"):
        """Poll the container's observable output (results file, logs): it is another process."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}:\n{self.logs()[-4000:]}")


@pytest.fixture
def containers():
    started: list[Container] = []

    def run(*args, **kwargs) -> Container:
        container = Container(*args, **kwargs)
        started.append(container)
        return container.start()

    yield run
    for container in started:
        container.remove()


def data_volume(path: Path) -> Path:
    """A folder for /var/lib/snsd that the image's user (not root) owns, as a fresh volume would be."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["chown", f"{UID}:{UID}", str(path)], check=True)
    return path


def trusted(localstack_url: str) -> str:
    return f"127.0.0.1:{urlsplit(localstack_url).port}"


def s3_client(aws_env):
    return boto3.client(
        "s3",
        endpoint_url=aws_env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``, from Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def get(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def post(url: str, body: bytes) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "text/plain"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


# The daemon's line when SIGTERM starts the drain.
DRAINING = re.compile(r"draining: waiting up to [\d.]+s for (\d+) running jobs; (\d+) pending stay spooled")


# ----------------------------------------------------------------------------------- tests
# Grouped in classes that carry the marks (not a module ``pytestmark``, not marks on functions):
# only then does pytest fold the skips of a machine without Docker into one summary line.  The
# timeout is long because the first test's setup builds the base image and the image (minutes on
# a cold machine).  TestImage needs no LocalStack but is marked like the end-to-end tests, so the
# quick in-memory run (-m "not localstack") does not build images either.


@pytest.mark.container
@pytest.mark.localstack
@pytest.mark.timeout(1800)
class TestImage:
    def test_the_image_is_small_and_runs_as_its_own_user(self, snsd_image):
        assert snsd_image.size_bytes < 400e6, f"runtime image is {snsd_image.size_bytes / 1e6:.0f} MB"
        config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", snsd_image.tag).stdout)
        assert config["User"] == f"{UID}:{UID}"
        # The pip settings of the build stage stay in the build stage.
        history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", snsd_image.tag).stdout
        assert "PIP_INDEX_URL" not in history and "PIP_EXTRA_INDEX_URL" not in history
        assert not any(env.startswith("PIP_") for env in config["Env"])

    def test_twisteds_plugin_cache_is_strictly_newer_than_every_plugin_file(self, snsd_image):
        # Otherwise twistd rewrites it at every start, which a read-only root (and uid 10001) cannot.
        check = (
            "import pathlib, twisted.plugins as p; d = pathlib.Path(p.__path__[0]); "
            "cache = (d / 'dropin.cache').stat().st_mtime; "
            "print(sorted(f.name for f in d.glob('*.py') if f.stat().st_mtime >= cache))"
        )
        result = docker("run", "--rm", "--network", "host", "--entrypoint", "python", snsd_image.tag, "-c", check)
        assert result.stdout.strip() == "[]"

    def test_healthy_by_its_own_healthcheck_as_uid_10001_writing_to_the_volume(self, snsd_image, containers, tmp_path):
        data = data_volume(tmp_path / "data")
        container = containers(snsd_image.tag, data, "--dry-run")
        FIGURES["container healthy after"] = f"{container.wait_healthy():.1f} s (HEALTHCHECK interval 10 s)"
        assert container.inspect("{{.State.Health.Status}}") == "healthy"
        assert docker("exec", container.name, "id", "-u").stdout.strip() == str(UID)
        assert get(container.url + "/readyz")[0] == 200
        spool = data / "spool.sqlite3"
        assert spool.exists() and spool.stat().st_uid == UID
        exit_code, _ = container.stop(grace=30)
        assert exit_code == 0, container.logs()[-4000:]
        assert (data / "dry_run_results.jsonl").stat().st_uid == UID
        # Twisted's plugin cache was written at build time: nothing tried to write it as uid 10001.
        assert "dropin.cache" not in container.logs()


@pytest.mark.container
@pytest.mark.localstack
@pytest.mark.timeout(1800)
class TestAgainstLocalStack:
    def test_an_upload_reaches_the_containerised_snsd_and_yields_a_result_in_the_volume(
        self, snsd_image, containers, tmp_path, localstack_url, aws_env
    ):
        data = data_volume(tmp_path / "data")
        container = containers(
            snsd_image.tag, data, "--dry-run", "--trusted-host", trusted(localstack_url), env=dict(aws_env)
        )
        container.wait_healthy()
        bucket = f"container-{uuid.uuid4().hex[:8]}"
        wiring = wire(
            localstack_url, container.url + "/", bucket=bucket, topic=f"{bucket}-topic", wait_confirmed_seconds=30
        )
        key = "uploads/a b été.csv"
        s3_client(aws_env).put_object(Bucket=bucket, Key=key, Body=b"id,name\n1,a\n2,b\n")

        def result():
            return [line for line in container.result_lines() if line["key"] == key]

        (line,) = container.wait_for(result, what=f"a result for {key}")
        assert line["status"] == "ok" and line["bucket"] == bucket and line["topic_arn"] == wiring.topic_arn
        assert line["result"]["rows"] == 2
        logs = container.logs()
        # Signed by LocalStack, verified with the certificate fetched from the trusted host.
        assert f"cached signing certificate http://{trusted(localstack_url)}" in logs
        assert "NOT verified" not in logs and "confirmed subscription" in logs

    def test_docker_stop_drains_running_jobs_and_a_restart_finishes_the_pending_ones(
        self, snsd_image, containers, tmp_path, localstack_url, aws_env
    ):
        data = data_volume(tmp_path / "data")
        jobs = tmp_path / "jobs"
        jobs.mkdir()
        (jobs / "snsd_container_jobs.py").write_text(SLOW_JOB)
        jobs.chmod(0o755)
        (jobs / "snsd_container_jobs.py").chmod(0o644)
        args = ("--dry-run", "--trusted-host", trusted(localstack_url), "--job", "snsd_container_jobs:slow")
        env = {
            **aws_env,
            "PYTHONPATH": "/opt/snsd-test-jobs",
            "SNSD_TEST_JOB_SECONDS": "4",
            "SNS_WORKER_MAX": "2",
            "SNSD_DRAIN_TIMEOUT_SECONDS": "20",
        }
        mounts = [(jobs, "/opt/snsd-test-jobs")]
        first = containers(snsd_image.tag, data, *args, env=env, mounts=mounts)
        first.wait_healthy()
        bucket = f"drain-{uuid.uuid4().hex[:8]}"
        wire(localstack_url, first.url + "/", bucket=bucket, topic=f"{bucket}-topic", wait_confirmed_seconds=30)
        keys = {f"slow/{i}.csv" for i in range(6)}
        s3 = s3_client(aws_env)
        for key in sorted(keys):
            s3.put_object(Bucket=bucket, Key=key, Body=b"x\n1\n")

        def all_accepted():
            status, text = get(f"http://127.0.0.1:{first.admin_port}/metrics")
            return status == 200 and metric_sum(text, "snsd_requests_total", type="Notification", status="200") >= 6

        first.wait_for(all_accepted, what="six notifications accepted")
        exit_code, seconds = first.stop(grace=30)
        logs = first.logs()
        FIGURES["docker stop with 2 running jobs"] = f"{seconds:.1f} s (grace 30 s, drain timeout 20 s)"
        running, pending = map(int, DRAINING.search(logs).groups())
        assert running >= 1 and pending >= 1, logs[-4000:]
        # Drained, not killed: a clean exit well inside the grace period.
        assert exit_code == 0 and seconds < 30, logs[-4000:]
        assert "drain timed out" not in logs
        done = [line["key"] for line in first.result_lines()]
        assert len(done) == len(set(done)) == 6 - pending, done

        second = containers(snsd_image.tag, data, *args, env=env, mounts=mounts)

        def finished():
            lines = second.result_lines()
            return lines if {line["key"] for line in lines} == keys else None

        lines = second.wait_for(finished, timeout=90, what="the pending records run after the restart")
        assert sorted(line["key"] for line in lines) == sorted(keys)  # each exactly once: nothing lost, none twice
        assert {line["status"] for line in lines} == {"ok"}
        assert f"ready: {pending} records pending" in second.logs()
        assert second.stop(grace=30)[0] == 0


@pytest.mark.container
@pytest.mark.localstack
@pytest.mark.timeout(1800)
class TestSQSMode:
    """deploy/kubernetes/sqs/'s shape in containers: a listener and a worker, each its own container."""

    def test_an_upload_goes_through_a_listener_container_and_the_queue_to_a_worker_container(
        self, snsd_image, containers, tmp_path, localstack_url, aws_env
    ):
        name = f"container-sqs-{uuid.uuid4().hex[:8]}"
        queue_url = wire_sqs(localstack_url, name, feed="listener").queue_url
        common = {**aws_env, "SNSD_QUEUE_URL": queue_url}
        listener = containers(
            snsd_image.tag,
            data_volume(tmp_path / "listener"),
            "--trusted-host",
            trusted(localstack_url),
            env={**common, "SNSD_ROLE": "listener"},
        )
        # A worker keeps no spool: its volume holds only the dry-run results.
        worker = containers(
            snsd_image.tag, data_volume(tmp_path / "worker"), "--dry-run", env={**common, "SNSD_ROLE": "worker"}
        )
        listener.wait_healthy()
        worker.wait_healthy()
        wire(localstack_url, listener.url + "/", bucket=name, topic=f"{name}-topic", wait_confirmed_seconds=30)
        keys = {f"queued/{i} été.csv" for i in range(3)}
        s3 = s3_client(aws_env)
        for key in sorted(keys):
            s3.put_object(Bucket=name, Key=key, Body=b"id\n1\n2\n")

        def finished():
            lines = worker.result_lines()
            return lines if {line["key"] for line in lines} == keys else None

        lines = worker.wait_for(finished, timeout=90, what="the worker's results")
        assert sorted(line["key"] for line in lines) == sorted(keys)
        assert {(line["status"], line["result"]["rows"]) for line in lines} == {("ok", 2)}
        assert not listener.result_lines(), "the listener runs no jobs"
        # An SNS POST to the worker is refused: it takes its work from the queue.
        assert post(worker.url + "/", b"{}")[0] == 404
        for container in (listener, worker):
            exit_code, _ = container.stop(grace=60)
            assert exit_code == 0, container.logs()[-4000:]
