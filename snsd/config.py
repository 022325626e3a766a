"""Option parsing for ``twistd snsd``: flag > environment variable > default.

Each option is declared once, with its environment variable, so ``--help`` and the README
table cannot drift apart.  Bad values become a one-line ``UsageError`` naming the option.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.python import usage

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Setting:
    flag: str
    env: str | None
    default: Any
    help: str
    kind: str = "str"  # str | int | float | bool | list
    choices: tuple[str, ...] = ()


SETTINGS = (
    Setting("port", "SNSD_PORT", "tcp:8080", "Listening endpoint: a port number or a Twisted server endpoint string."),
    Setting("workers", "SNS_WORKER_MAX", 10, "Worker threads: the most jobs that run at once.", "int"),
    Setting(
        "job-processes",
        "SNSD_JOB_PROCESSES",
        None,
        "Processes the built-in data-quality job runs in (default: one per core); 0 runs it in the worker threads.",
        "int",
    ),
    Setting(
        "job-nice",
        "SNSD_JOB_NICE",
        19,
        "Niceness added to job threads and processes (0-19; Linux): under CPU contention the endpoint runs first.",
        "int",
    ),
    Setting(
        "breaker-max-failures",
        "CIRCUIT_BREAKER_MAX_FAILURES",
        5,
        "Consecutive job failures that open the breaker.",
        "int",
    ),
    Setting(
        "breaker-cooldown",
        "CIRCUIT_BREAKER_COOLDOWN_SECONDS",
        60.0,
        "Seconds the breaker stays open before a trial job.",
        "float",
    ),
    Setting(
        "breaker-max-cooldown",
        "CIRCUIT_BREAKER_MAX_COOLDOWN_SECONDS",
        None,
        "Cap on the doubled cooldown after failed trials (default 10x the cooldown).",
        "float",
    ),
    Setting(
        "breaker-half-open-successes",
        "CIRCUIT_BREAKER_HALF_OPEN_SUCCESSES",
        1,
        "Trial jobs that must succeed before the breaker closes.",
        "int",
    ),
    Setting(
        "breaker-mode",
        "CIRCUIT_BREAKER_MODE",
        "skip",
        "While open: skip (200, record kept as dead letter), reject (503 + Retry-After) "
        "or spool (200, runs when the breaker closes; recommended).",
        "str",
        ("skip", "reject", "spool"),
    ),
    Setting("dry-run", "SNSD_DRY_RUN", False, "Write results to the --results JSONL file instead of S3.", "bool"),
    Setting("results", "SNSD_RESULTS_PATH", "./dry_run_results.jsonl", "Results file in dry-run mode."),
    Setting("results-bucket", "SNSD_RESULTS_BUCKET", None, "S3 bucket for results (required unless --dry-run)."),
    Setting("results-prefix", "SNSD_RESULTS_PREFIX", "dq-results/", "Key prefix for results in S3."),
    Setting("job", "SNSD_JOB", None, "Job to run per object, as package.module:callable (default: data-quality)."),
    Setting("rules", "SNSD_RULES", None, "Data-quality rules file (YAML or JSON)."),
    Setting("max-body", "SNSD_MAX_BODY", 1024 * 1024, "Largest request body accepted, in bytes.", "int"),
    Setting("spool", "SNSD_SPOOL_PATH", "./snsd-spool.sqlite3", "SQLite spool file; :memory: keeps it in memory."),
    Setting("max-pending", "SNSD_MAX_PENDING", 10_000, "Records spooled but not started before answering 503.", "int"),
    Setting(
        "ack",
        "SNSD_ACK",
        "spooled",
        "Answer SNS once records are spooled, or after their jobs finish.",
        "str",
        ("spooled", "after-job"),
    ),
    Setting(
        "drain-timeout", "SNSD_DRAIN_TIMEOUT_SECONDS", 30.0, "Seconds running jobs get to finish on SIGTERM.", "float"
    ),
    Setting(
        "verify-signatures",
        "SNSD_VERIFY_SIGNATURES",
        True,
        "Verify SNS signatures (turn off only for local experiments).",
        "bool",
    ),
    Setting(
        "trusted-host",
        "SNSD_TRUSTED_HOSTS",
        (),
        "Emulator host[:port] whose certificate and SubscribeURL are trusted (repeatable).",
        "list",
    ),
    Setting(
        "cert-dir",
        "SNSD_CERT_DIR",
        None,
        "Folder of preloaded SNS signing certificates, each named as its SigningCertURL's file "
        "(SimpleNotificationService-<id>.pem): used instead of downloading them.",
    ),
    Setting(
        "topic-arn", "SNSD_TOPIC_ARNS", (), "Accept only these topics; * matches within a field (repeatable).", "list"
    ),
    Setting("allow-raw-delivery", "SNSD_ALLOW_RAW_DELIVERY", False, "Accept unsigned raw message deliveries.", "bool"),
    Setting("max-age", "SNSD_MAX_AGE_SECONDS", 3600.0, "Refuse messages whose signed Timestamp is older.", "float"),
    Setting(
        "dedup-ttl", "SNSD_DEDUP_TTL_SECONDS", 3600.0, "Seconds a MessageId is remembered (>= --max-age).", "float"
    ),
    Setting("basic-auth", "SNSD_BASIC_AUTH", None, "Require HTTP Basic credentials USER:PASS."),
    Setting("log-format", "SNSD_LOG_FORMAT", "text", "Log format on stdout.", "str", ("text", "json")),
)

BY_FLAG = {s.flag: s for s in SETTINGS}


def _describe_default(setting: Setting) -> str:
    if "(default" in setting.help:  # computed at startup, and the help says how
        return ""
    return f" (default: {'none' if setting.default is None else setting.default})"


def _convert(setting: Setting, raw: Any, name: str | None = None) -> Any:
    """``raw`` as the setting's kind; ``name`` is where it came from (the flag or the variable)."""
    name = name or f"--{setting.flag}"
    if raw is None:
        return None
    if setting.kind == "int":
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise usage.UsageError(f"{name} must be a whole number, not {raw!r}") from None
        if value < (
            1
            if setting.flag
            in ("workers", "breaker-max-failures", "max-body", "max-pending", "breaker-half-open-successes")
            else 0
        ):
            raise usage.UsageError(f"{name} must be positive, not {raw!r}")
        return value
    if setting.kind == "float":
        try:
            value = float(str(raw).strip())
        except ValueError:
            raise usage.UsageError(f"{name} must be a number of seconds, not {raw!r}") from None
        if not value >= 0 or value == float("inf"):
            raise usage.UsageError(f"{name} must be a finite number >= 0, not {raw!r}")
        return value
    if setting.kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in TRUE:
            return True
        if text in FALSE:
            return False
        raise usage.UsageError(f"{name} must be 1/0 or true/false, not {raw!r}")
    if setting.kind == "list":
        if isinstance(raw, (list, tuple)):
            return tuple(raw)
        return tuple(item.strip() for item in str(raw).split(",") if item.strip())
    value = str(raw)
    if setting.choices and value not in setting.choices:
        raise usage.UsageError(f"{name} must be one of {', '.join(setting.choices)}, not {value!r}")
    return value


class SNSDOptions(usage.Options):
    """Options of ``twistd snsd``; after parsing, ``self.settings`` maps flag -> value."""

    synopsis = "[options]"
    longdesc = (
        "Receive AWS SNS deliveries of S3 'object created' events, verify them, spool them and run a job "
        "per object on a bounded thread pool guarded by a circuit breaker. Every option can also be set "
        "with the environment variable named in brackets; a flag wins over its variable."
    )

    optFlags = [
        ["dry-run", None, "Write results to the --results JSONL file instead of S3. [SNSD_DRY_RUN]"],
        [
            "no-verify-signatures",
            None,
            "Do not verify SNS signatures: local experiments only. [SNSD_VERIFY_SIGNATURES=0]",
        ],
        ["allow-raw-delivery", None, "Accept unsigned raw message deliveries. [SNSD_ALLOW_RAW_DELIVERY]"],
    ]
    optParameters = [
        [s.flag, None, None, f"{s.help} [{s.env}]{_describe_default(s)}"]
        for s in SETTINGS
        if s.kind not in ("bool", "list")
    ]

    def __init__(self, environ: dict | None = None):
        super().__init__()
        self._environ = os.environ if environ is None else environ
        self._lists: dict[str, list[str]] = {"trusted-host": [], "topic-arn": []}
        self.settings: dict[str, Any] = {}
        self._from_environment: dict[str, str] = {}  # flag -> the variable its value came from

    def opt_trusted_host(self, value):
        """Emulator host[:port] trusted for certificates and SubscribeURL; http allowed there (repeatable).
        [SNSD_TRUSTED_HOSTS, comma-separated]"""
        self._lists["trusted-host"].append(value)

    def opt_topic_arn(self, value):
        """Accept only this topic ARN; * matches within a field (repeatable). [SNSD_TOPIC_ARNS, comma-separated]"""
        self._lists["topic-arn"].append(value)

    def postOptions(self):
        flags = {
            "dry-run": True if self["dry-run"] else None,
            "verify-signatures": False if self["no-verify-signatures"] else None,
            "allow-raw-delivery": True if self["allow-raw-delivery"] else None,
        }
        for setting in SETTINGS:
            if setting.kind == "list":
                given = self._lists[setting.flag] or None
            elif setting.kind == "bool":
                given = flags[setting.flag]
            else:
                given = self[setting.flag]
            source = f"--{setting.flag}"
            if given is None and setting.env and setting.env in self._environ:
                given, source = self._environ[setting.env], setting.env
                self._from_environment[setting.flag] = setting.env
            self.settings[setting.flag] = setting.default if given is None else _convert(setting, given, source)
        try:
            self._cross_check()
        except usage.UsageError as e:
            raise usage.UsageError(self._named(str(e))) from None

    def _named(self, message: str) -> str:
        """``message`` with each flag whose value came from the environment named by its variable:
        the user who set SNSD_PORT should read SNSD_PORT, not --port."""
        for flag, env in self._from_environment.items():
            message = re.sub(rf"--{re.escape(flag)}(?![\w-])", env, message)
        return message

    def _cross_check(self) -> None:
        s = self.settings
        port = str(s["port"]).strip()
        s["port"] = f"tcp:{port}" if port.isdigit() else port
        _check_endpoint(s["port"])
        if s["spool"] != ":memory:":
            _check_writable_file("--spool", s["spool"])
        if s["dry-run"]:
            _check_writable_file("--results", s["results"])
        if s["dedup-ttl"] < s["max-age"]:
            raise usage.UsageError(f"--dedup-ttl ({s['dedup-ttl']:g}) must be at least --max-age ({s['max-age']:g})")
        if not s["dry-run"] and not s["results-bucket"]:
            raise usage.UsageError("--results-bucket is required unless --dry-run is given")
        if s["basic-auth"] is not None and ":" not in s["basic-auth"]:
            raise usage.UsageError("--basic-auth must be USER:PASS")
        if s["job-nice"] > 19:
            raise usage.UsageError(f"--job-nice must be between 0 and 19, not {s['job-nice']}")
        if s["breaker-max-cooldown"] is not None and s["breaker-max-cooldown"] < s["breaker-cooldown"]:
            raise usage.UsageError("--breaker-max-cooldown must be at least --breaker-cooldown")
        from snsd.trust.certs import load_certificate_dir
        from snsd.trust.hosts import HostTrust
        from snsd.trust.proxy import proxy_from_environment
        from snsd.trust.topics import TopicAllowList

        if s["cert-dir"] is not None:
            try:
                load_certificate_dir(s["cert-dir"])
            except ValueError as e:
                raise usage.UsageError(f"--cert-dir: {e}") from None
        try:
            proxy_from_environment(self._environ)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

        for flag, check in (("trusted-host", HostTrust), ("topic-arn", TopicAllowList)):
            try:
                check(s[flag])
            except ValueError as e:
                raise usage.UsageError(f"--{flag}: {e}") from None
        builtin = s["job"] is None
        s["job"] = load_job(s["job"], s["rules"])
        if s["job-processes"] is None:
            s["job-processes"] = os.cpu_count() or 1
        if builtin and s["job-processes"] > 0:
            from snsd.dq.processes import ProcessPoolJob

            # The rule book load_job validated, not the path: the children must not re-read the file.
            s["job"] = ProcessPoolJob(s["job"].rulebook, s["job-processes"], nice=s["job-nice"])


def _check_endpoint(description: str) -> None:
    """Parse the listening endpoint now, so a typo is a usage error and not a traceback at start."""
    from twisted.internet.endpoints import serverFromString

    hint = "a port number (0-65535) or a Twisted endpoint string such as tcp:8080:interface=127.0.0.1"
    try:
        # Building an endpoint does not listen or touch the reactor, which twistd installs later.
        endpoint = serverFromString(None, description)
    except Exception as e:
        raise usage.UsageError(f"--port must be {hint}, not {description!r} ({e})") from None
    number = getattr(endpoint, "_port", None)  # TCP and SSL endpoints
    if isinstance(number, int) and not 0 <= number <= 65535:
        raise usage.UsageError(f"--port must be {hint}, not {description!r} (port out of range)")


def _check_writable_file(flag: str, path: str) -> None:
    """The daemon must be able to create or append to ``path``: say so now, not in a traceback later."""
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        problem = "is a directory"
    elif not folder.is_dir():
        problem = f"its folder {folder} does not exist"
    elif target.exists() and not os.access(target, os.W_OK):
        problem = "is not writable"
    elif not target.exists() and not os.access(folder, os.W_OK | os.X_OK):
        problem = f"its folder {folder} is not writable"
    else:
        return
    raise usage.UsageError(f"{flag} {path}: {problem}")


def load_job(spec: str | None, rules: str | None) -> Callable:
    """Import ``package.module:callable``, or build the data-quality job from ``rules``."""
    if spec is None:
        from snsd.dq.job import make_job
        from snsd.dq.rules import RulesError

        try:
            return make_job(rules)
        except RulesError as e:
            raise usage.UsageError(f"--rules: {e}") from None
        except OSError as e:
            raise usage.UsageError(f"--rules: cannot read {rules}: {e.strerror}") from None
    if rules is not None:
        raise usage.UsageError("--rules applies to the built-in job only; drop --job or --rules")
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise usage.UsageError(f"--job must be package.module:callable, not {spec!r}")
    import importlib

    try:
        target = importlib.import_module(module_name)
    except Exception as e:
        raise usage.UsageError(f"--job: cannot import {module_name}: {type(e).__name__}: {e}") from None
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise usage.UsageError(f"--job: {module_name} has no attribute {attribute}")
    if not callable(target):
        raise usage.UsageError(f"--job: {spec} is not callable")
    return target
