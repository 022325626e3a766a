"""A Docker engine and the snsd image, for the tests that build and run the container for real.

``docker_engine`` makes sure a daemon answers: it installs Debian's ``docker.io`` with apt when
there is no ``dockerd`` (root only), starts ``dockerd`` when none runs (logging to
``~/.cache/snsd/dockerd.log``) and stops it at the end of the session only if it started it.
``snsd_image`` builds the image from the repository's Dockerfile with ``--network host`` on a
base made from Debian packages by ``scripts/base-image.sh`` (cached under ``~/.cache/snsd``), or
on ``$SNSD_PYTHON_IMAGE`` (for example ``python:3.11-slim``) where a registry is reachable.

A machine where no engine can be had skips the container tests with one line saying why;
``SNSD_REQUIRE_CONTAINER=1`` (set by ``make test``, hence CI) turns that skip into a failure.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SNSD_CACHE") or Path.home() / ".cache" / "snsd")
IMAGE_TAG = "snsd:test"
# The figures the terminal summary prints (see tests/conftest.py).
FIGURES: dict[str, str] = {}


class DockerUnavailable(Exception):
    """No Docker engine could be had on this machine; the message says why, in one line."""


def required() -> bool:
    return os.environ.get("SNSD_REQUIRE_CONTAINER") == "1"


def docker(*args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess:
    """``docker ARGS``, output captured; a failure raises with the command's own output."""
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {shlex.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def _engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return docker("info", "--format", "{{.ServerVersion}}", timeout=20, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _install_docker() -> None:
    if os.geteuid() != 0:
        raise DockerUnavailable("no dockerd on this machine, and installing docker.io with apt needs root")
    if shutil.which("apt-get") is None:
        raise DockerUnavailable("no dockerd on this machine and no apt-get to install docker.io with")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Another apt (a second test run, unattended upgrades) may hold dpkg's lock: wait for it.
    wait = ["-o", "DPkg::Lock::Timeout=600"]
    for argv in (["apt-get", *wait, "update", "-q"], ["apt-get", *wait, "install", "-y", "-q", "docker.io"]):
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1500)
        if result.returncode != 0 and shutil.which("dockerd") is None:
            last = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
            raise DockerUnavailable(f"{shlex.join(argv)} exited {result.returncode}: {last[0]}")


def _tail(path: Path, lines: int = 1) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.contextmanager
def docker_engine(timeout: float = 60.0):
    """A Docker engine that answers, for the duration of the block."""
    if _engine_answers():
        yield
        return
    if shutil.which("dockerd") is None:
        _install_docker()
    if shutil.which("docker") is None:
        raise DockerUnavailable("docker.io installed but no docker client on PATH")
    if os.geteuid() != 0:
        raise DockerUnavailable("no Docker engine answers, and starting dockerd needs root")
    CACHE.mkdir(parents=True, exist_ok=True)
    log_path = CACHE / "dockerd.log"
    with open(log_path, "ab") as log:
        # No bridge and no iptables rules: every container here runs with --network host, and
        # a machine without iptables (or without the right to change it) can still run them.
        process = subprocess.Popen(
            ["dockerd", "--bridge=none", "--iptables=false"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while not _engine_answers():
            if process.poll() is not None:
                if _engine_answers():
                    break  # another test run started one at the same moment: use that one
                raise DockerUnavailable(f"dockerd exited {process.returncode}: {_tail(log_path)} (log: {log_path})")
            if time.monotonic() > deadline:
                raise DockerUnavailable(f"dockerd did not answer within {timeout:g}s (log: {log_path})")
            time.sleep(0.5)
        yield
    finally:
        _stop_unless_in_use(process)


def _stop_unless_in_use(process: subprocess.Popen) -> None:
    """Stop the dockerd we started, unless containers we did not start run on it (every test
    removes its own): on a shared machine another test run may have come to use it meanwhile."""
    if process.poll() is not None:
        return
    try:
        running = docker("ps", "--quiet", timeout=20, check=False).stdout.split()
    except subprocess.TimeoutExpired:
        running = []
    if running:
        return
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _pip_settings() -> dict[str, str]:
    """The index settings pip uses on this machine that a build can use too, as build args.

    Only http(s) locations count: a ``file://`` index or a local wheel folder is not in the build
    context.  The CA bundle is not passed here: the base image trusts it already."""
    found: dict[str, str] = {}
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    config = {}
    for line in listing.stdout.splitlines():
        key, _, value = line.partition("=")
        config[key.rsplit(".", 1)[-1]] = value.strip().strip("'\"")
    for name in ("index-url", "extra-index-url", "trusted-host"):
        variable = "PIP_" + name.upper().replace("-", "_")
        raw = os.environ.get(variable) or config.get(name, "")
        words = raw.split()
        if name != "trusted-host":
            words = [w for w in words if w.startswith(("http://", "https://"))]
        if words:
            found[variable] = " ".join(words)
    return found


def _base_image() -> str:
    configured = os.environ.get("SNSD_PYTHON_IMAGE")
    if configured:
        return configured
    started = time.monotonic()
    result = subprocess.run([str(ROOT / "scripts" / "base-image.sh")], capture_output=True, text=True, timeout=1500)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/base-image.sh exited {result.returncode}:\n{result.stderr[-4000:]}")
    tag = result.stdout.strip().splitlines()[-1]
    FIGURES["base image"] = f"{tag}, ready in {time.monotonic() - started:.0f} s"
    return tag


@dataclass(frozen=True)
class Image:
    tag: str
    base: str
    size_bytes: int
    build_seconds: float


def build_image(tag: str = IMAGE_TAG) -> Image:
    base = _base_image()
    args = ["build", "--network", "host", "--build-arg", f"PYTHON_IMAGE={base}"]
    for variable, value in _pip_settings().items():
        args += ["--build-arg", f"{variable}={value}"]
    started = time.monotonic()
    docker(*args, "--tag", tag, str(ROOT), timeout=1500)
    seconds = time.monotonic() - started
    size = int(docker("image", "inspect", "--format", "{{.Size}}", tag).stdout)
    FIGURES["snsd image"] = f"{tag} on {base}: {size / 1e6:.0f} MB, built in {seconds:.0f} s"
    return Image(tag, base, size, seconds)


# -------------------------------------------------------------------------- pytest fixtures

_session = contextlib.ExitStack()
_state: dict[str, object] = {}


def _engine_problem() -> str | None:
    """Why no engine can be had (None: one answers, started by us if need be), decided once."""
    if "engine" not in _state:
        try:
            _session.enter_context(docker_engine())
            _state["engine"] = None
            # Stops a dockerd we started once the test process ends, after the fixtures that
            # used it are torn down.
            atexit.register(_session.close)
        except DockerUnavailable as exc:
            _state["engine"] = f"container tests need a Docker engine: {exc}"
    return _state["engine"]


def skip_without_engine(items) -> None:
    """Mark the selected container tests skipped when no engine can be had (unless required).

    Called once collection is done, so an engine is looked for (and perhaps started) only when
    container tests were selected; a skip mark, unlike a skip from a fixture, is folded into one
    summary line for all of them."""
    selected = [item for item in items if item.get_closest_marker("container")]
    if not selected or required():
        return
    problem = _engine_problem()
    if problem is not None:
        for item in selected:
            item.add_marker(pytest.mark.skip(reason=problem))


@pytest.fixture(scope="session")
def docker_ready() -> None:
    problem = _engine_problem()
    if problem is not None:
        # Only with SNSD_REQUIRE_CONTAINER=1: otherwise skip_without_engine skipped the test.
        pytest.fail(f"{problem} (SNSD_REQUIRE_CONTAINER=1)", pytrace=False)


@pytest.fixture(scope="session")
def snsd_image(docker_ready) -> Image:
    if "image" not in _state:
        _state["image"] = build_image()
    return _state["image"]
