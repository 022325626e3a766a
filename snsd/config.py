"""Option parsing for ``twistd snsd``: flag > environment variable > default, into frozen :class:`Settings`.

Each option is declared once, in :data:`SETTINGS`, with its environment variable and its coercer,
so ``--help`` and the README table cannot drift apart.  The coercer is the one ``usage.Options``
calls for the flag, and the same function reads the environment variable; a bad value becomes a
one-line ``UsageError`` naming whichever of the two it came from.

Parsing only reads and checks: nothing is built here that holds a resource (the job's worker
processes, the pool, the spool are made by :func:`snsd.daemon.build_daemon` at startup).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from twisted.python import usage

from snsd.admission import AckMode, BreakerMode

TRUE = {"1", "true", "yes", "on"}


class Role(enum.Enum):
    """Which part of snsd this process runs (``--role``; docs/scaling.md)."""

    ALL = "all"  # everything in one process, records in the local SQLite spool (the default)
    LISTENER = "listener"  # verify and spool locally, forward the records to the --queue
    WORKER = "worker"  # take records from the --queue and run their jobs


FALSE = {"0", "false", "no", "off", ""}


# -- coercers: text in, value out, ValueError("must be ...") for anything else -----------------


def _whole(minimum: int):
    def whole_number(text) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise ValueError(f"must be a whole number, not {text!r}") from None
        if value < minimum:
            raise ValueError(f"must be positive, not {text!r}")
        return value

    return whole_number


positive = _whole(1)
non_negative = _whole(0)


def niceness(text) -> int:
    value = non_negative(text)
    if value > 19:
        raise ValueError(f"must be between 0 and 19, not {value}")
    return value


def seconds(text) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise ValueError(f"must be a number of seconds, not {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"must be a finite number >= 0, not {text!r}")
    return value


def positive_seconds(text) -> float:
    value = seconds(text)
    if value == 0:
        raise ValueError(f"must be a number of seconds > 0, not {text!r}")
    return value


def boolean(text) -> bool:
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ValueError(f"must be 1/0 or true/false, not {text!r}")


def comma_list(text) -> tuple[str, ...]:
    return tuple(item.strip() for item in str(text).split(",") if item.strip())


def choice(kind: type[enum.Enum]):
    def one_of(text):
        try:
            return kind(str(text))
        except ValueError:
            allowed = ", ".join(member.value for member in kind)
            raise ValueError(f"must be one of {allowed}, not {text!r}") from None

    return one_of


def log_format(text) -> str:
    if str(text) not in ("text", "json"):
        raise ValueError(f"must be one of text, json, not {text!r}")
    return str(text)


def credentials(text) -> str:
    if ":" not in str(text):
        raise ValueError("must be USER:PASS")
    return str(text)


ENDPOINT_HINT = "a port number (0-65535) or a Twisted endpoint string such as tcp:8080:interface=127.0.0.1"


def endpoint(text) -> str:
    """A listening endpoint description; a bare number N means ``tcp:N``.

    Parsed now (building an endpoint object neither listens nor touches the reactor, which
    twistd installs later), so a typo is a usage error and not a traceback at start."""
    from twisted.internet.endpoints import serverFromString

    description = str(text).strip()
    if description.isdigit():
        description = f"tcp:{description}"
    try:
        serverFromString(None, description)
    except Exception as e:
        raise ValueError(f"must be {ENDPOINT_HINT}, not {description!r} ({e})") from None
    number = _port_number(description)
    if number is not None and not 0 <= number <= 65535:
        raise ValueError(f"must be {ENDPOINT_HINT}, not {description!r} (port out of range)")
    return description


def _port_number(description: str) -> int | None:
    """The port of a tcp/tcp6/ssl description (the first argument or ``port=``), or None."""
    kind, _, rest = description.partition(":")
    if kind.lower() not in ("tcp", "tcp6", "ssl"):
        return None
    arguments = rest.split(":")
    named = [a.partition("=")[2] for a in arguments if a.startswith("port=")]
    positional = [a for a in arguments if "=" not in a]
    text = (named or positional or [""])[0]
    return int(text) if text.lstrip("-").isdigit() else None


def text(value) -> str:
    return str(value)


@dataclass(frozen=True)
class Setting:
    """One option: its flag, its environment variable, its default and its coercer."""

    flag: str
    env: str | None
    default: Any
    help: str
    coerce: Callable[[str], Any] = text
    kind: str = "parameter"  # parameter | flag (given or not) | list (repeatable, comma-separated in env)

    @property
    def attribute(self) -> str:
        return self.flag.replace("-", "_")


SETTINGS = (
    Setting(
        "port",
        "SNSD_PORT",
        "tcp:8080",
        "Listening endpoint: a port number or a Twisted server endpoint string.",
        endpoint,
    ),
    Setting(
        "admin-port",
        "SNSD_ADMIN_PORT",
        "tcp:9090:interface=127.0.0.1",
        "Listening endpoint of the admin routes (/breaker, /metrics, health); keep it on a private interface.",
        endpoint,
    ),
    Setting(
        "admin-on-main-port",
        "SNSD_ADMIN_ON_MAIN_PORT",
        False,
        "Serve the admin routes on --port instead, open to whoever reaches it: development only.",
        boolean,
        "flag",
    ),
    Setting(
        "request-deadline",
        "SNSD_REQUEST_DEADLINE_SECONDS",
        30.0,
        "Seconds a request may take to arrive whole (headers and body) from its first byte; then 408.",
        positive_seconds,
    ),
    Setting(
        "max-connections",
        "SNSD_MAX_CONNECTIONS",
        None,
        "Open connections on --port (default: the descriptor limit less 100, at most 10000); at the cap "
        "a new one replaces the connection waiting longest for its request.",
        positive,
    ),
    Setting(
        "max-connections-per-peer",
        "SNSD_MAX_CONNECTIONS_PER_PEER",
        0,
        "Open connections from one client address; 0: no cap (behind a load balancer, all come from it).",
        non_negative,
    ),
    Setting("workers", "SNS_WORKER_MAX", 10, "Worker threads: the most jobs that run at once.", positive),
    Setting(
        "job-processes",
        "SNSD_JOB_PROCESSES",
        None,
        "Processes the built-in data-quality job runs in (default: one per core); 0 runs it in the worker threads.",
        non_negative,
    ),
    Setting(
        "job-nice",
        "SNSD_JOB_NICE",
        19,
        "Niceness added to job threads and processes (0-19; Linux): under CPU contention the endpoint runs first.",
        niceness,
    ),
    Setting(
        "breaker-max-failures",
        "CIRCUIT_BREAKER_MAX_FAILURES",
        5,
        "Consecutive job failures that open the breaker.",
        positive,
    ),
    Setting(
        "breaker-cooldown",
        "CIRCUIT_BREAKER_COOLDOWN_SECONDS",
        60.0,
        "Seconds the breaker stays open before a trial job.",
        seconds,
    ),
    Setting(
        "breaker-max-cooldown",
        "CIRCUIT_BREAKER_MAX_COOLDOWN_SECONDS",
        None,
        "Cap on the doubled cooldown after failed trials (default 10x the cooldown).",
        seconds,
    ),
    Setting(
        "breaker-half-open-successes",
        "CIRCUIT_BREAKER_HALF_OPEN_SUCCESSES",
        1,
        "Trial jobs that must succeed before the breaker closes.",
        positive,
    ),
    Setting(
        "breaker-mode",
        "CIRCUIT_BREAKER_MODE",
        BreakerMode.SKIP,
        "While open: skip (200, record kept as dead letter), reject (503 + Retry-After) "
        "or spool (200, runs when the breaker closes; recommended).",
        choice(BreakerMode),
    ),
    Setting(
        "dry-run",
        "SNSD_DRY_RUN",
        False,
        "Write results to the --results JSONL file instead of S3.",
        boolean,
        "flag",
    ),
    Setting("results", "SNSD_RESULTS_PATH", "./dry_run_results.jsonl", "Results file in dry-run mode."),
    Setting("results-bucket", "SNSD_RESULTS_BUCKET", None, "S3 bucket for results (required unless --dry-run)."),
    Setting("results-prefix", "SNSD_RESULTS_PREFIX", "dq-results/", "Key prefix for results in S3."),
    Setting("job", "SNSD_JOB", None, "Job to run per object, as package.module:callable (default: data-quality)."),
    Setting("rules", "SNSD_RULES", None, "Data-quality rules file (YAML or JSON)."),
    Setting("max-body", "SNSD_MAX_BODY", 1024 * 1024, "Largest request body accepted, in bytes.", positive),
    Setting("spool", "SNSD_SPOOL_PATH", "./snsd-spool.sqlite3", "SQLite spool file; :memory: keeps it in memory."),
    Setting(
        "max-pending", "SNSD_MAX_PENDING", 10_000, "Records spooled but not started before answering 503.", positive
    ),
    Setting(
        "ack",
        "SNSD_ACK",
        AckMode.SPOOLED,
        "Answer SNS once records are spooled (spooled), or after their jobs finish (after-job).",
        choice(AckMode),
    ),
    Setting(
        "drain-timeout", "SNSD_DRAIN_TIMEOUT_SECONDS", 30.0, "Seconds running jobs get to finish on SIGTERM.", seconds
    ),
    Setting(
        "verify-signatures",
        "SNSD_VERIFY_SIGNATURES",
        True,
        "Verify SNS signatures (turn off only for local experiments).",
        boolean,
        "flag",
    ),
    Setting(
        "trusted-host",
        "SNSD_TRUSTED_HOSTS",
        (),
        "Emulator host[:port] whose certificate and SubscribeURL are trusted (repeatable).",
        comma_list,
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
        "topic-arn",
        "SNSD_TOPIC_ARNS",
        (),
        "Accept only these topics; * matches within a field (repeatable).",
        comma_list,
        "list",
    ),
    Setting(
        "allow-raw-delivery",
        "SNSD_ALLOW_RAW_DELIVERY",
        False,
        "Accept unsigned raw message deliveries.",
        boolean,
        "flag",
    ),
    Setting("max-age", "SNSD_MAX_AGE_SECONDS", 3600.0, "Refuse messages whose signed Timestamp is older.", seconds),
    Setting(
        "dedup-ttl", "SNSD_DEDUP_TTL_SECONDS", 3600.0, "Seconds a MessageId is remembered (>= --max-age).", seconds
    ),
    Setting("basic-auth", "SNSD_BASIC_AUTH", None, "Require HTTP Basic credentials USER:PASS.", credentials),
    Setting("log-format", "SNSD_LOG_FORMAT", "text", "Log format on stdout: text or json.", log_format),
    Setting(
        "role",
        "SNSD_ROLE",
        Role.ALL,
        "all (one process), listener (spool and forward to --queue) or worker (run jobs from --queue).",
        choice(Role),
    ),
    Setting("queue", "SNSD_QUEUE_URL", None, "SQS queue URL shared by listeners and workers (--role listener/worker)."),
    Setting(
        "visibility-timeout",
        "SNSD_VISIBILITY_TIMEOUT_SECONDS",
        60,
        "Worker: seconds a received message stays invisible; extended every third of it while its jobs run.",
        positive,
    ),
)


@dataclass(frozen=True)
class Settings:
    """Every option's value, checked and typed; built once by :class:`SNSDOptions`.

    The defaults are the options' defaults, so a test can build ``Settings(dry_run=True, ...)``."""

    port: str = "tcp:8080"
    admin_port: str = "tcp:9090:interface=127.0.0.1"
    admin_on_main_port: bool = False
    request_deadline: float = 30.0
    max_connections: int = 1000  # resolved from --max-connections (from the descriptor limit by default)
    max_connections_per_peer: int = 0
    workers: int = 10
    job_processes: int = 0  # resolved from --job-processes (one per core by default)
    job_nice: int = 19
    breaker_max_failures: int = 5
    breaker_cooldown: float = 60.0
    breaker_max_cooldown: float | None = None
    breaker_half_open_successes: int = 1
    breaker_mode: BreakerMode = BreakerMode.SKIP
    dry_run: bool = False
    results: str = "./dry_run_results.jsonl"
    results_bucket: str | None = None
    results_prefix: str = "dq-results/"
    job: Callable | None = None  # the loaded job (a callable); None only in hand-made Settings
    builtin_job: bool = True  # the data-quality job (it may run in worker processes)
    rules: str | None = None
    max_body: int = 1024 * 1024
    spool: str = "./snsd-spool.sqlite3"
    max_pending: int = 10_000
    ack: AckMode = AckMode.SPOOLED
    drain_timeout: float = 30.0
    verify_signatures: bool = True
    trusted_host: tuple[str, ...] = ()
    cert_dir: str | None = None
    topic_arn: tuple[str, ...] = ()
    allow_raw_delivery: bool = False
    max_age: float = 3600.0
    dedup_ttl: float = 3600.0
    basic_auth: str | None = None
    log_format: str = "text"
    role: Role = Role.ALL
    queue: str | None = None
    visibility_timeout: int = 60


def _describe_default(setting: Setting) -> str:
    if "(default" in setting.help:  # computed at startup, and the help says how
        return ""
    default = setting.default.value if isinstance(setting.default, enum.Enum) else setting.default
    return f" (default: {'none' if default is None else default})"


def _named(name: str, coerce: Callable[[str], Any]) -> Callable[[str], Any]:
    """``coerce``, with its complaint prefixed by where the value came from (a flag or a variable).

    It raises ``UsageError`` itself: ``usage.Options`` would otherwise prefix a ValueError's
    text with "Parameter type enforcement failed"."""

    def named(value):
        try:
            return coerce(value)
        except ValueError as e:
            raise usage.UsageError(f"{name} {e}") from None

    return named


class SNSDOptions(usage.Options):
    """Options of ``twistd snsd``; after parsing, ``self.settings`` holds the frozen :class:`Settings`."""

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
        [
            "admin-on-main-port",
            None,
            "Serve the admin routes (/breaker, /metrics) on --port instead of --admin-port, open to whoever "
            "reaches it: development only. [SNSD_ADMIN_ON_MAIN_PORT]",
        ],
    ]
    optParameters = [
        [s.flag, None, None, f"{s.help} [{s.env}]{_describe_default(s)}", _named(f"--{s.flag}", s.coerce)]
        for s in SETTINGS
        if s.kind == "parameter"
    ]

    def __init__(self, environ: dict | None = None):
        super().__init__()
        self._environ = os.environ if environ is None else environ
        self._lists: dict[str, list[str]] = {"trusted-host": [], "topic-arn": []}
        self.settings: Settings | None = None
        self._source: dict[str, str] = {}  # flag -> where its value came from: --flag or the variable

    def opt_trusted_host(self, value):
        """Emulator host[:port] trusted for certificates and SubscribeURL; http allowed there (repeatable).
        [SNSD_TRUSTED_HOSTS, comma-separated]"""
        self._lists["trusted-host"].append(value)

    def opt_topic_arn(self, value):
        """Accept only this topic ARN; * matches within a field (repeatable). [SNSD_TOPIC_ARNS, comma-separated]"""
        self._lists["topic-arn"].append(value)

    def _given(self, setting: Setting):
        """The flag's value (already coerced by usage.Options), or None if the flag was not given."""
        if setting.kind == "list":
            return tuple(self._lists[setting.flag]) or None
        if setting.flag == "verify-signatures":
            return False if self["no-verify-signatures"] else None
        if setting.kind == "flag":
            return True if self[setting.flag] else None
        return self[setting.flag]

    def postOptions(self):
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            value, self._source[setting.flag] = self._given(setting), f"--{setting.flag}"
            if value is None and setting.env and setting.env in self._environ:
                self._source[setting.flag] = setting.env
                value = _named(setting.env, setting.coerce)(self._environ[setting.env])
            values[setting.flag] = setting.default if value is None else value
        self.settings = self._checked(values)

    def name(self, flag: str) -> str:
        """How the user spelled ``flag``'s value: ``--flag`` or its environment variable."""
        return self._source.get(flag, f"--{flag}")

    def _checked(self, v: dict[str, Any]) -> Settings:
        """The values' cross-checks (one value against another, or against the file system)."""
        if v["spool"] != ":memory:" and v["role"] is not Role.WORKER:  # a worker keeps nothing locally
            _check_writable_file(self.name("spool"), v["spool"])
        if v["dry-run"]:
            _check_writable_file(self.name("results"), v["results"])
        if v["dedup-ttl"] < v["max-age"]:
            ttl, age = self.name("dedup-ttl"), self.name("max-age")
            raise usage.UsageError(f"{ttl} ({v['dedup-ttl']:g}) must be at least {age} ({v['max-age']:g})")
        if v["role"] is not Role.ALL and not v["queue"]:
            raise usage.UsageError(f"{self.name('role')} {v['role'].value} needs --queue (or SNSD_QUEUE_URL)")
        if v["role"] is Role.ALL and v["queue"]:
            raise usage.UsageError(f"{self.name('queue')} needs --role listener or --role worker")
        if v["role"] is Role.LISTENER and v["ack"] is AckMode.AFTER_JOB:
            raise usage.UsageError(f"{self.name('ack')} after-job needs the jobs in this process: --role all")
        if v["visibility-timeout"] > 43200:
            raise usage.UsageError(f"{self.name('visibility-timeout')} must be at most 43200 (SQS's limit)")
        if not v["dry-run"] and not v["results-bucket"] and v["role"] is not Role.LISTENER:
            raise usage.UsageError("--results-bucket is required unless --dry-run is given")
        if v["breaker-max-cooldown"] is not None and v["breaker-max-cooldown"] < v["breaker-cooldown"]:
            raise usage.UsageError(
                f"{self.name('breaker-max-cooldown')} must be at least {self.name('breaker-cooldown')}"
            )
        from snsd.trust.certs import load_certificate_dir
        from snsd.trust.hosts import HostTrust
        from snsd.trust.proxy import proxy_from_environment
        from snsd.trust.topics import TopicAllowList

        if v["cert-dir"] is not None:
            try:
                load_certificate_dir(v["cert-dir"])
            except ValueError as e:
                raise usage.UsageError(f"{self.name('cert-dir')}: {e}") from None
        try:
            proxy_from_environment(self._environ)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

        for flag, check in (("trusted-host", HostTrust), ("topic-arn", TopicAllowList)):
            try:
                check(v[flag])
            except ValueError as e:
                raise usage.UsageError(f"{self.name(flag)}: {e}") from None
        job = load_job(v["job"], v["rules"], job_name=self.name("job"), rules_name=self.name("rules"))
        known = {f.name for f in fields(Settings)}
        typed = {setting.attribute: v[setting.flag] for setting in SETTINGS if setting.attribute in known}
        typed["job"] = job
        typed["builtin_job"] = v["job"] is None
        typed["job_processes"] = (os.cpu_count() or 1) if v["job-processes"] is None else v["job-processes"]
        if v["max-connections"] is None:
            typed["max_connections"] = default_max_connections()
        return Settings(**typed)


def default_max_connections() -> int:
    """The descriptor limit less 100 (the spool, logs, outbound connections, pipes), at most 10000."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(16, min(soft - 100, 10_000))


def _check_writable_file(name: str, path: str) -> None:
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
    raise usage.UsageError(f"{name} {path}: {problem}")


def load_job(spec: str | None, rules: str | None, *, job_name: str = "--job", rules_name: str = "--rules") -> Callable:
    """Import ``package.module:callable``, or build the data-quality job from ``rules``.

    This reads and checks the rules file (a value: the rule book), and imports the job's module;
    it starts nothing.  Worker processes for the built-in job are started by the daemon."""
    if spec is None:
        from snsd.dq.job import make_job
        from snsd.dq.rules import RulesError

        try:
            return make_job(rules)
        except RulesError as e:
            raise usage.UsageError(f"{rules_name}: {e}") from None
        except OSError as e:
            raise usage.UsageError(f"{rules_name}: cannot read {rules}: {e.strerror}") from None
    if rules is not None:
        raise usage.UsageError(f"{rules_name} applies to the built-in job only; drop {job_name} or {rules_name}")
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise usage.UsageError(f"{job_name} must be package.module:callable, not {spec!r}")
    import importlib

    try:
        target = importlib.import_module(module_name)
    except Exception as e:
        raise usage.UsageError(f"{job_name}: cannot import {module_name}: {type(e).__name__}: {e}") from None
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise usage.UsageError(f"{job_name}: {module_name} has no attribute {attribute}")
    if not callable(target):
        raise usage.UsageError(f"{job_name}: {spec} is not callable")
    return target
