"""Make a LocalStack reachable without Docker.

If ``LOCALSTACK_URL`` (default ``http://127.0.0.1:4566``) already answers ``/_localstack/health``
it is used as is.  Otherwise LocalStack runs in "host mode" from a cached virtualenv built with a
Python >= 3.12 found on this machine (LocalStack 2026.x does not run on the project's 3.11), bound
to loopback only, and is stopped again when the caller is done with it.

This module is deliberately plain blocking code (subprocess + urllib): it runs before any reactor
exists, from pytest fixtures, bench scripts and the command line.

    python -m snsd_devtools.localstack up            # ensure one and keep it running until Ctrl-C
    python -m snsd_devtools.localstack install       # only build the cached venv
    python -m snsd_devtools.localstack run -- CMD... # ensure one, run CMD against it, stop it after
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

LOCALSTACK_VERSION = "2026.3.0"
DEFAULT_URL = "http://127.0.0.1:4566"
SERVICES = ("sns", "s3", "sqs")
CONSTRAINTS = Path(__file__).with_name("localstack-constraints.txt")
# Written only after pip succeeded, so an interrupted install is redone rather than trusted.
MARKER = ".snsd-localstack-installed"
# localstack-core's runtime imports twisted.internet.ssl, which needs service_identity, but does
# not declare it; the constraints file keeps it (and the rest) at versions that work together.
EXTRA_REQUIREMENTS = ("service-identity",)
MIN_VERSION = (3, 12)

# LocalStack's Twisted gateway ignores GATEWAY_LISTEN's host for IPv4 and listens on every
# interface ("TODO: interface = host?" in localstack/runtime/server/twisted.py).  This launcher
# runs ``python -m localstack.runtime.main`` with IPv4 listeners defaulting to loopback instead.
LAUNCHER = """
import os, runpy
from twisted.internet import endpoints
_init = endpoints.TCP4ServerEndpoint.__init__
def _loopback_init(self, reactor, port, backlog=50, interface=""):
    _init(self, reactor, port, backlog, interface or os.environ["SNSD_LOCALSTACK_INTERFACE"])
endpoints.TCP4ServerEndpoint.__init__ = _loopback_init
runpy.run_module("localstack.runtime.main", run_name="__main__", alter_sys=True)
"""

EXIT_NO_PYTHON = 2
EXIT_FAILED = 1


class LocalStackError(RuntimeError):
    """LocalStack could not be installed or started; the message says why."""


class NoSuitablePython(LocalStackError):
    """No Python >= 3.12 was found to build LocalStack's venv with."""


@dataclass(frozen=True)
class PythonCandidate:
    """A way to run some Python: the argv prefix and extra environment (pyenv shims need one)."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        prefix = " ".join(f"{k}={v}" for k, v in sorted(self.env.items()))
        return f"{prefix} {' '.join(self.argv)}".strip()


# --------------------------------------------------------------------------- finding a Python


def _pyenv_versions(pyenv: str, env: Mapping[str, str]) -> tuple[list[str], Path | None]:
    """Installed pyenv versions (newest first among 3.12+) and pyenv's root, or nothing."""
    versions: list[str] = []
    root: Path | None = None
    try:
        out = subprocess.run([pyenv, "versions", "--bare"], env=dict(env), capture_output=True, text=True, timeout=10)
        versions = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        out = subprocess.run([pyenv, "root"], env=dict(env), capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            root = Path(out.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    if root is None and env.get("PYENV_ROOT"):
        root = Path(env["PYENV_ROOT"])
    return sorted((v for v in versions if _version_tuple(v) >= MIN_VERSION), key=_version_tuple, reverse=True), root


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def python_candidates(env: Mapping[str, str] | None = None) -> list[PythonCandidate]:
    """Every way to get a Python >= 3.12 worth trying, most explicit first.

    On the development machines ``python3.13`` is a pyenv shim that fails unless ``PYENV_VERSION``
    names an installed version, hence the pyenv-derived candidates.
    """
    env = dict(os.environ if env is None else env)
    path = env.get("PATH", os.defpath)
    candidates: list[PythonCandidate] = []
    explicit = env.get("SNSD_LOCALSTACK_PYTHON")
    if explicit:
        candidates.append(PythonCandidate((shutil.which(explicit, path=path) or explicit,)))
    for name in ("python3.13", "python3.12"):
        found = shutil.which(name, path=path)
        if found:
            candidates.append(PythonCandidate((found,)))
    pyenv = shutil.which("pyenv", path=path)
    root = Path(env["PYENV_ROOT"]) if env.get("PYENV_ROOT") else None
    if pyenv:
        versions, root = _pyenv_versions(pyenv, env)
        for version in versions:
            short = "python{}.{}".format(*_version_tuple(version)[:2])
            shim = shutil.which(short, path=path) or shutil.which("python3", path=path)
            if shim:
                candidates.append(PythonCandidate((shim,), {"PYENV_VERSION": version}))
    if root is not None:
        installed = [p for p in (root / "versions").glob("3.*") if _version_tuple(p.name) >= MIN_VERSION]
        for version_dir in sorted(installed, key=lambda p: _version_tuple(p.name), reverse=True):
            binary = version_dir / "bin" / "python3"
            if binary.exists():
                candidates.append(PythonCandidate((str(binary),)))
    unique: list[PythonCandidate] = []
    for candidate in candidates:
        if candidate not in unique:
            unique.append(candidate)
    return unique


def check_candidate(candidate: PythonCandidate, env: Mapping[str, str] | None = None) -> bool:
    """Run the candidate and ask it whether it is new enough; any failure means no."""
    run_env = {**(os.environ if env is None else env), **candidate.env}
    try:
        out = subprocess.run(
            [*candidate.argv, "-c", "import sys; print(sys.version_info >= (3, 12))"],
            env=run_env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and out.stdout.strip() == "True"


def find_python(env: Mapping[str, str] | None = None) -> PythonCandidate:
    """The first candidate that really runs and is >= 3.12, or :class:`NoSuitablePython`."""
    candidates = python_candidates(env)
    for candidate in candidates:
        if check_candidate(candidate, env):
            return candidate
    tried = ", ".join(c.describe() for c in candidates) or "none found"
    raise NoSuitablePython(
        f"LocalStack {LOCALSTACK_VERSION} needs Python >= 3.12 and none works here (tried: {tried}); "
        "install one (e.g. `pyenv install 3.13`) or point SNSD_LOCALSTACK_PYTHON at it"
    )


# --------------------------------------------------------------------------- the cached venv


def venv_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("SNSD_LOCALSTACK_VENV"):
        return Path(env["SNSD_LOCALSTACK_VENV"]).expanduser()
    cache = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "snsd" / f"localstack-{LOCALSTACK_VERSION}"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _marker_text() -> str:
    # What was installed, so a changed version, extra or constraints file triggers a reinstall.
    digest = hashlib.sha256(CONSTRAINTS.read_bytes()).hexdigest()[:16]
    return f"localstack-core=={LOCALSTACK_VERSION} {' '.join(EXTRA_REQUIREMENTS)} constraints={digest}\n"


def is_installed(venv: Path) -> bool:
    marker = venv / MARKER
    return venv_python(venv).exists() and marker.exists() and marker.read_text() == _marker_text()


def ensure_venv(venv: Path | None = None, out=sys.stderr) -> Path:
    """Build (or reuse) the venv holding ``localstack-core[runtime]``; return its path."""
    venv = venv_path() if venv is None else venv
    if is_installed(venv):
        return venv
    python = find_python()
    print(
        f"snsd-localstack: installing localstack-core {LOCALSTACK_VERSION} into {venv} with {python.describe()}",
        file=out,
    )
    env = {**os.environ, **python.env}
    venv.parent.mkdir(parents=True, exist_ok=True)
    if not venv_python(venv).exists():
        _check_call([*python.argv, "-m", "venv", str(venv)], env, "creating the venv")
    pip = [str(venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    _check_call(
        [*pip, "-c", str(CONSTRAINTS), f"localstack-core[runtime]=={LOCALSTACK_VERSION}", *EXTRA_REQUIREMENTS],
        {k: v for k, v in os.environ.items() if k != "PYENV_VERSION"},
        "pip install localstack-core",
    )
    (venv / MARKER).write_text(_marker_text())
    return venv


def _check_call(argv: Sequence[str], env: Mapping[str, str], what: str) -> None:
    result = subprocess.run(list(argv), env=dict(env), capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
        raise LocalStackError(f"{what} failed (exit {result.returncode}):\n{tail}")


# --------------------------------------------------------------------------- health and processes


def health(url: str, timeout: float = 2.0) -> dict | None:
    """LocalStack's health document, or None when nothing (or something else) answers."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/_localstack/health", timeout=timeout) as response:
            if response.status != 200:
                return None
            document = json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return document if isinstance(document, dict) else None


def is_healthy(url: str, services: Sequence[str] = (), timeout: float = 2.0) -> bool:
    """True when ``url`` is a LocalStack whose ``services`` are available (or running)."""
    document = health(url, timeout)
    if document is None:
        return False
    states = document.get("services") or {}
    return all(states.get(name) in ("available", "running") for name in services)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class LocalStackProcess:
    """One host-mode LocalStack we started: its port, scratch dir, log, and how to stop it."""

    def __init__(self, venv: Path, port: int, services: Sequence[str] = SERVICES):
        self.venv = venv
        self.port = port
        self.services = tuple(services)
        self.url = f"http://127.0.0.1:{port}"
        self.root = Path(tempfile.mkdtemp(prefix=f"snsd-localstack-{port}-"))
        self.log_path = self.root / "localstack.log"
        self.process: subprocess.Popen | None = None

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PYENV_VERSION"}
        env.update(
            {
                # No DNS server (it would want port 53) and only loopback.
                "DNS_ADDRESS": "0",
                "GATEWAY_LISTEN": f"127.0.0.1:{self.port}",
                # Also the host of the SigningCertURL that snsd must trust.
                "LOCALSTACK_HOST": f"127.0.0.1:{self.port}",
                "SNSD_LOCALSTACK_INTERFACE": "127.0.0.1",
                "SERVICES": ",".join(self.services),
                "FILESYSTEM_ROOT": str(self.root / "fs"),
                # There is no network to send analytics to or download a TLS certificate from.
                "DISABLE_EVENTS": "1",
                "SKIP_SSL_CERT_DOWNLOAD": "1",
            }
        )
        return env

    def start(self) -> None:
        # LocalStack does not exit when its port is taken (it logs and waits): find out now.
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", self.port))
            except OSError as exc:
                raise LocalStackError(
                    f"port {self.port} is taken by something that is not a healthy LocalStack ({exc.strerror})"
                ) from None
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.process = subprocess.Popen(
                [str(venv_python(self.venv)), "-c", LAUNCHER],
                env=self.environment(),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group, so stop() reaches any children it forks.
                start_new_session=True,
            )
        finally:
            log.close()

    def wait_healthy(self, timeout: float = 120.0, interval: float = 0.25) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise LocalStackError(
                    f"LocalStack exited with {self.process.returncode} before becoming healthy; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            if is_healthy(self.url, self.services, timeout=1.0):
                return
            time.sleep(interval)
        raise LocalStackError(
            f"LocalStack on {self.url} not healthy after {timeout:.0f}s; log {self.log_path}:\n{_tail(self.log_path)}"
        )

    def stop(self, timeout: float = 20.0) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                try:
                    process.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def ensure_localstack(
    url: str | None = None, port: int | None = None, timeout: float = 180.0, out=sys.stderr
) -> Iterator[str]:
    """Yield the URL of a healthy LocalStack, starting (and afterwards stopping) one if needed.

    ``url`` (or, when neither argument is given, ``$LOCALSTACK_URL`` or the default) is used if
    it is healthy.  Otherwise LocalStack is started on ``port`` (or ``url``'s port) on 127.0.0.1.
    """
    if url is None and port is None:
        url = os.environ.get("LOCALSTACK_URL") or DEFAULT_URL
    if url and is_healthy(url):
        yield url.rstrip("/")
        return
    if port is None:
        port = urlsplit(url).port or 4566
    own = f"http://127.0.0.1:{port}"
    if own != (url or "").rstrip("/") and is_healthy(own):
        yield own
        return
    venv = ensure_venv(out=out)
    process = LocalStackProcess(venv, port)
    try:
        process.start()
        print(
            f"snsd-localstack: started LocalStack {LOCALSTACK_VERSION} on {process.url} (log {process.log_path})",
            file=out,
        )
        process.wait_healthy(timeout)
        yield process.url
    finally:
        process.stop()


def aws_environment(url: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a boto3/aws-cli child needs to talk to the LocalStack at ``url``."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "LOCALSTACK_URL": url,
        }
    )
    return env


# --------------------------------------------------------------------------- command line


class _Terminated(Exception):
    pass


def _raise_terminated(signum, frame):
    raise _Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="snsd-localstack", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="ensure LocalStack and keep it running until Ctrl-C or SIGTERM")
    sub.add_parser("install", help="only build the cached venv")
    run = sub.add_parser("run", help="ensure LocalStack, run CMD against it, then stop it if we started it")
    for p in (up, run):
        p.add_argument("--url", default=None, help="use this LocalStack if healthy (default $LOCALSTACK_URL)")
        p.add_argument("--port", type=int, default=None, help="port to start LocalStack on (default: the URL's)")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- command and arguments")
    args = parser.parse_args(argv)

    try:
        if args.command == "install":
            print(ensure_venv())
            return 0
        # SIGTERM unwinds like Ctrl-C, so the context manager stops what it started.
        signal.signal(signal.SIGTERM, _raise_terminated)
        if args.command == "up":
            with ensure_localstack(args.url, args.port) as url:
                print(f"LocalStack ready at {url} (Ctrl-C to stop)", flush=True)
                with contextlib.suppress(KeyboardInterrupt, _Terminated):
                    while True:
                        signal.pause()
            return 0
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            parser.error("run needs a command after --")
        with ensure_localstack(args.url, args.port) as url:
            try:
                return subprocess.call(cmd, env=aws_environment(url))
            except FileNotFoundError:
                print(f"snsd-localstack: command not found: {cmd[0]}", file=sys.stderr)
                return 127
    except NoSuitablePython as exc:
        print(f"snsd-localstack: {exc}", file=sys.stderr)
        return EXIT_NO_PYTHON
    except LocalStackError as exc:
        print(f"snsd-localstack: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (KeyboardInterrupt, _Terminated):
        return 130


if __name__ == "__main__":
    sys.exit(main())
