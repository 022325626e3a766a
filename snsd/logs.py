"""Logging setup: readable text by default, one JSON object per line with ``--log-format json``.

Both formats pass through the same two filters before they reach stdout:

- a level filter (``info`` by default, ``SNSD_LOG_LEVEL`` to change it), so the per-message
  ``debug`` lines (accepted, job ok) cost nothing under a burst;
- a :class:`Throttle`, so a burst of the same warning (every job failing, every request
  refused) prints a few lines and then one "N more like this" summary per interval, not one
  line per message.

:class:`ActivitySummary` adds one periodic line with what the per-message lines no longer
say: requests answered, jobs finished and records pending in the last interval, read from
the Prometheus counters.

twistd starts logging *after* ``makeService`` returns, with the first observer it finds of:
``--logger``'s factory, an ``ILogObserver`` component on the application, its own default
(``--syslog``, ``--logfile``, stdout).  :class:`TwistdLogging`, the service ``makeService``
returns with the daemon inside, takes the middle place: it sets snsd's observer as that
component when twistd makes it the application's service.  So ``--logger`` and a ``.tac``'s
own component keep priority, ``--syslog`` keeps twistd's observer, and ``--logfile`` gets
snsd's format in the file twistd would have written.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable

from prometheus_client import REGISTRY
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)
from twisted.logger import Logger as _TwistedLogger
from twisted.python.components import Componentized
from zope.interface import implementer

from snsd.timestamps import iso

TEXT, JSON = "text", "json"
FORMATS = (TEXT, JSON)
LEVEL_ENV = "SNSD_LOG_LEVEL"
SUMMARY_INTERVAL = 10.0
# Lines of one kind printed per interval before the rest are only counted.
THROTTLE_BURST = 5
# Distinct reasons of one line pattern with a budget each per interval; the rest share one.
MAX_REASONS = 8
OTHER_REASONS = "(other reasons)"
# Twisted's namespaces for redirected standard output and error (twisted.logger._io).
UNTHROTTLED_NAMESPACES = frozenset({"stdout", "stderr"})

# Keys of a twisted.logger event (or a legacy twisted.python.log one) that are bookkeeping,
# not the event's own data.
_LEGACY_KEYS = frozenset({"message", "isError", "system", "time", "format", "why", "failure", "printed"})
_RESERVED = ("time", "level", "namespace", "message")


# Levels the daemon's filter drops anyway; empty until TwistdLogging sets them, so tests see every event.
_dropped_levels: set[LogLevel] = set()


class Logger(_TwistedLogger):
    """A twisted.logger Logger that skips events of a level the daemon's filter would drop.

    The filter drops them too, but only after ``emit`` has built the event and the publisher
    has passed it on: about 5 microseconds per per-message ``debug`` line on the request path,
    where this costs one set lookup.  Every snsd module logs through it, so there is one
    ``Logger`` in use (tests may use twisted.logger's, which this only extends).
    """

    def emit(self, level, format=None, **kwargs):
        if level in _dropped_levels:
            return
        super().emit(level, format, **kwargs)


def drop_levels_below(level: LogLevel | None) -> None:
    """Make :class:`Logger` skip events less severe than ``level`` (None: skip nothing).

    TwistdLogging sets it to the daemon's level; in-process benchmarks set it themselves."""
    _dropped_levels.clear()
    if level is not None:
        _dropped_levels.update(other for other in LogLevel.iterconstants() if other < level)


def _jsonable(value):
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def event_as_dict(event: dict) -> dict:
    """An event as a flat JSON-ready dict: time, level, namespace, message, then its fields."""
    level = event.get("log_level")
    if level is None:
        level = LogLevel.critical if event.get("isError") else LogLevel.info
    namespace = event.get("log_namespace")
    if not namespace or namespace == "log_legacy":
        # twisted.python.log messages (port open/closed): their "system" is the closest thing.
        namespace = event.get("log_system") or event.get("system") or "-"
    out = {
        "time": iso(event.get("log_time") or event.get("time") or 0.0),
        "level": level.name,
        "namespace": namespace,
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY_KEYS:
            continue
        out["field_" + key if key in _RESERVED else key] = _jsonable(value)
    failure = event.get("log_failure") or event.get("failure")
    if failure is not None:
        out["error_type"] = failure.type.__name__ if isinstance(failure.type, type) else str(failure.type)
        out["error"] = failure.getErrorMessage()
        out["traceback"] = failure.getTraceback()
    return out


@implementer(ILogObserver)
class JSONLinesObserver:
    """Writes each event as one JSON object and a newline, flushed: what log shippers read.

    Unlike ``jsonFileLogObserver`` there is no record-separator prefix and the fields are
    plain keys, not Twisted's serialised event.
    """

    def __init__(self, out):
        self._out = out
        self._lock = threading.Lock()  # jobs log from worker threads

    def __call__(self, event: dict) -> None:
        try:
            line = json.dumps(event_as_dict(event), ensure_ascii=False, default=str)
        except Exception as e:  # a log line must never take the daemon down
            line = json.dumps({"level": "error", "namespace": __name__, "message": f"unloggable event: {e!r}"})
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()


@implementer(ILogObserver)
class Throttle:
    """Passes the first ``burst`` events of each kind per interval; counts the rest.

    An event's kind is its namespace, level, format string (``"job failed {bucket}/{key}"``) and
    its ``reason`` field if it has one, so distinct messages of one kind (each failing job) share
    one budget, while a refusal for one reason cannot hide one for another.  Reasons can carry
    a request's text (a bad ``Type``), so each line pattern gets its own budget for at most
    ``MAX_REASONS`` reasons per interval; further reasons share one more.  :meth:`flush`,
    called every interval, emits one summary event per kind that was cut short and opens a new
    interval.  Failures (events carrying a traceback) of one kind are throttled like any other.

    Never throttled: ``critical`` events (each may be the only record of something lost) and
    redirected stdout/stderr, whose lines are each a line of one text (a traceback at startup).
    """

    def __init__(self, observer: Callable[[dict], None], burst: int = THROTTLE_BURST, clock=None):
        self._observer = observer
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple, int] = {}
        self._example: dict[tuple, dict] = {}
        self._reasons: dict[tuple, set] = {}  # per line pattern, the reasons with a budget of their own

    def __call__(self, event: dict) -> None:
        namespace, level = event.get("log_namespace"), event.get("log_level")
        if level is LogLevel.critical or namespace in UNTHROTTLED_NAMESPACES:
            self._observer(event)
            return
        pattern, reason = (namespace, level, event.get("log_format")), event.get("reason")
        with self._lock:
            if reason is not None:
                reasons = self._reasons.setdefault(pattern, set())
                if reason not in reasons:
                    if len(reasons) >= MAX_REASONS:
                        reason = OTHER_REASONS
                    else:
                        reasons.add(reason)
            kind = (*pattern, reason)
            seen = self._seen.get(kind, 0) + 1
            self._seen[kind] = seen
            if seen > self.burst:
                self._example[kind] = event
                return
        self._observer(event)

    def flush(self, interval: float = SUMMARY_INTERVAL) -> None:
        with self._lock:
            cut = [(kind, self._seen[kind] - self.burst, self._example[kind]) for kind in self._example]
            self._seen = {}
            self._example = {}
            self._reasons = {}
        for (namespace, level, _format, _reason), suppressed, last in cut:
            summary = {
                "log_namespace": namespace,
                "log_level": level or LogLevel.info,
                "log_format": "{suppressed} more like '{last_message}' in the last {interval:.1f}s",
                "log_time": self._clock.seconds() if self._clock else last.get("log_time"),
                "suppressed": suppressed,
                "interval": interval,
                "last_message": formatEvent(last),
            }
            self._observer(summary)


class ActivitySummary:
    """One line per interval with what happened, read from the Prometheus counters.

    The per-message lines are ``debug``; this is what the default level says instead: how many
    requests were answered (by status), how many jobs finished (by outcome), dead letters, and
    how many records are pending.  Nothing is logged for an idle interval.
    """

    def __init__(self, logger, registry=REGISTRY):
        self._log = logger
        self._registry = registry
        self._last = self._read()

    def _read(self) -> dict[tuple[str, str], float]:
        totals: dict[tuple[str, str], float] = {}
        wanted = {
            "snsd_requests_total": "status",
            "snsd_jobs_total": "outcome",
            "snsd_dead_letters_total": "reason",
        }
        for metric in self._registry.collect():
            for sample in metric.samples:
                label = wanted.get(sample.name)
                if label is None:
                    continue
                key = (sample.name, sample.labels.get(label, ""))
                totals[key] = totals.get(key, 0.0) + sample.value
        return totals

    def tick(self, interval: float = SUMMARY_INTERVAL) -> dict | None:
        now = self._read()
        delta = {k: v - self._last.get(k, 0.0) for k, v in now.items() if v - self._last.get(k, 0.0) > 0}
        self._last = now
        if not delta:
            return None

        def part(name):
            return {label: int(v) for (metric, label), v in sorted(delta.items()) if metric == name}

        requests, jobs, dead = part("snsd_requests_total"), part("snsd_jobs_total"), part("snsd_dead_letters_total")
        pending = self._registry.get_sample_value("snsd_spool_pending") or 0
        fields = {
            "interval": interval,
            "requests": sum(requests.values()),
            "requests_by_status": requests,
            "jobs": sum(jobs.values()),
            "jobs_by_outcome": jobs,
            "dead_letters": sum(dead.values()),
            "pending": int(pending),
        }
        self._log.info(
            "last {interval:.1f}s: {requests} requests ({requests_text}), {jobs} jobs ({jobs_text}), "
            "{dead_letters} dead letters, {pending} pending",
            requests_text=_counts_text(requests),
            jobs_text=_counts_text(jobs),
            **fields,
        )
        return fields


def _counts_text(counts: dict) -> str:
    return ", ".join(f"{label}: {n}" for label, n in counts.items()) or "none"


def level_from_env(environ=os.environ) -> LogLevel:
    name = (environ.get(LEVEL_ENV) or "info").strip().lower()
    try:
        return LogLevel.levelWithName(name)
    except Exception:
        return LogLevel.info


def make_observer(log_format: str, out=None, level: LogLevel = LogLevel.info, clock=None):
    """The filtered observer chain for ``log_format``; returns ``(observer, throttle)``."""
    out = out if out is not None else sys.stdout
    sink = JSONLinesObserver(out) if log_format == JSON else textFileLogObserver(out)
    throttle = Throttle(sink, clock=clock)
    return FilteringLogObserver(throttle, [LogLevelFilterPredicate(defaultLogLevel=level)]), throttle


def log_file(twistd_options) -> object | None:
    """The file twistd's own observer would write to for ``twistd_options`` (twistd's parsed
    ``ServerOptions``; None outside twistd: stdout), or None with ``--syslog``.

    The same choice as twistd's ``UnixAppLogger``: stdout under ``-n`` without ``--logfile`` or
    with ``--logfile -``, else the file (``twistd.log`` by default), reopened on SIGUSR1."""
    options = twistd_options if twistd_options is not None else {"nodaemon": True}
    if options.get("syslog"):
        return None
    name = options.get("logfile") or ""
    if name == "-" or (not name and options.get("nodaemon")):
        return sys.stdout
    from twisted.python.logfile import LogFile

    out = LogFile.fromFullPath(name or "twistd.log")
    # As twistd does: unless something else owns SIGUSR1 (or there is none: Windows).
    if hasattr(signal, "SIGUSR1") and not signal.getsignal(signal.SIGUSR1):

        def rotate(signum, _frame):
            from twisted.internet import reactor

            reactor.callFromThread(out.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return out


class TwistdLogging(MultiService):
    """The service twistd runs: snsd's log observer, its periodic lines, and the daemon as a child.

    Every ``SUMMARY_INTERVAL`` seconds (``clock``) the throttle says what it cut and the activity
    summary says what happened; once more after the children have stopped (the drain's last jobs).
    """

    def __init__(self, log_format: str, *, twistd_options=None, level: LogLevel | None = None, clock=None):
        super().__init__()
        if log_format not in FORMATS:
            raise ValueError(f"unknown log format {log_format!r}; expected one of {FORMATS}")
        if clock is None:
            from twisted.internet import reactor as clock
        self.log_format = log_format
        self.level = level if level is not None else level_from_env()
        self._twistd_options = twistd_options
        self._clock = clock
        self.throttle: Throttle | None = None
        self._summary: ActivitySummary | None = None
        self._last = clock.seconds()
        ticks = TimerService(SUMMARY_INTERVAL, self.tick)
        ticks.clock = clock
        ticks.setServiceParent(self)

    def setServiceParent(self, parent):
        super().setServiceParent(parent)
        if not isinstance(parent, Componentized) or parent.getComponent(ILogObserver) is not None:
            return  # not twistd's application, or one with an observer of its own (a .tac)
        out = log_file(self._twistd_options)
        if out is None:
            return  # --syslog: twistd's syslog observer
        observer, self.throttle = make_observer(self.log_format, out, self.level, clock=self._clock)
        parent.setComponent(ILogObserver, observer)
        drop_levels_below(self.level)

    def tick(self) -> None:
        now = self._clock.seconds()
        interval, self._last = max(now - self._last, 0.0), now
        if self.throttle is not None:
            self.throttle.flush(interval)
        if self._summary is None:  # the first tick, as the service starts: counting starts here
            self._summary = ActivitySummary(Logger(namespace="snsd.activity"))
        else:
            self._summary.tick(interval)

    def stopService(self):
        def last_tick(result):
            self.tick()
            return result

        return super().stopService().addBoth(last_tick)
