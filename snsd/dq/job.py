"""The data-quality job: stream one S3 object, check it, return a verdict.

A file that fails its checks is a *successful* job with verdict ``failed``; only trouble reaching or
decoding the object raises (``JobError``), because only that says something about the system's health
and belongs in the circuit breaker's count.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import botocore.exceptions
from botocore.config import Config

from snsd.awsclients import MAX_POOL_CONNECTIONS, SharedClient
from snsd.dq.checks import TableChecker, check_result
from snsd.dq.formats import UnreadableError, detect_format, open_source
from snsd.dq.profile import Profiler
from snsd.dq.rules import RuleBook, load_rules
from snsd.logs import Logger
from snsd.records import S3ObjectRecord

log = Logger()

S3_CONFIG = Config(
    connect_timeout=5,
    read_timeout=60,
    retries={"max_attempts": 4, "mode": "standard"},
    max_pool_connections=MAX_POOL_CONNECTIONS,
)

_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}
_CONNECTION = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ResponseStreamingError,
    ConnectionError,
    TimeoutError,
)


class JobError(Exception):
    """The job could not judge the object.  ``kind`` is one of s3_not_found, s3_access_denied,
    s3_connection, s3_error, unreadable, worker_crashed (raised by snsd.dq.processes)."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message

    def __reduce__(self):
        # Crosses from a data-quality worker process (snsd.dq.processes) intact.
        return (type(self), (self.kind, self.message))


class _Body:
    """The StreamingBody, remembering an S3/network failure mid-stream so it is not mistaken for bad data
    after Arrow has wrapped it in its own exception."""

    def __init__(self, body):
        self._body = body
        self.error: BaseException | None = None

    def read(self, n: int = -1) -> bytes:
        try:
            return self._body.read(n)
        except Exception as e:
            self.error = e
            raise


class DataQualityJob:
    def __init__(
        self,
        rulebook: RuleBook | None = None,
        s3_client_factory: Callable[[], object] | None = None,
        block_size: int | None = None,
    ):
        self.rulebook = rulebook or RuleBook()
        self._s3 = SharedClient("s3", S3_CONFIG, factory=s3_client_factory)
        self.block_size = block_size

    def __call__(self, record: S3ObjectRecord) -> dict:
        started = time.monotonic()
        rule_set = self.rulebook.match(record.bucket, record.key)
        response = self._get(record)
        body = _Body(response["Body"])
        try:
            fmt = detect_format(record.key, response.get("ContentType"), response.get("ContentEncoding"))
            if fmt is None:
                return self._result("unsupported", rule_set, None, 0, 0, [], [], started)
            try:
                source = open_source(fmt, body, rule_set, self.block_size)
                checker = TableChecker(rule_set) if rule_set else None
                profiler = None if rule_set else Profiler()
                for batch in source.batches():
                    if checker is not None:
                        checker.feed(batch, source.nulls_normalised)
                    else:
                        profiler.feed(batch)
            except UnreadableError as e:
                if body.error is not None:
                    raise self._s3_error(body.error, record) from e
                raise JobError("unreadable", f"s3://{record.bucket}/{record.key}: {e}") from e
            except _CONNECTION as e:
                raise self._s3_error(e, record) from e
            except Exception as e:
                if body.error is not None:
                    raise self._s3_error(body.error, record) from e
                raise
        finally:
            response["Body"].close()
        columns = list(source.columns)
        if checker is not None:
            checks = checker.finish(columns, source.parse_errors)
            verdict = "passed" if all(c["passed"] for c in checks) else "failed"
            result = self._result(verdict, rule_set, fmt, checker.rows, source.bytes_read, columns, checks, started)
        else:
            rows = profiler.rows
            errors = source.parse_errors
            checks = [check_result("not_empty", None, rows > 0, rows, ">= 1 rows", errors.lines if not rows else ())]
            verdict = "passed" if rows > 0 else "failed"
            result = self._result(verdict, None, fmt, rows, source.bytes_read, columns, checks, started)
            result["profile"] = profiler.finish(columns)
            result["parse_errors"] = {"count": errors.count, "lines": errors.lines}
        log.debug(
            "dq {verdict} s3://{bucket}/{key} rule_set={rule_set} rows={rows} in {duration_ms} ms",
            verdict=verdict,
            bucket=record.bucket,
            key=record.key,
            rule_set=result["rule_set"],
            rows=result["rows"],
            duration_ms=result["duration_ms"],
        )
        return result

    def _get(self, record: S3ObjectRecord) -> dict:
        kwargs = {"Bucket": record.bucket, "Key": record.key}
        if record.version_id:
            kwargs["VersionId"] = record.version_id
        try:
            return self._s3.get().get_object(**kwargs)
        except (botocore.exceptions.ClientError, *_CONNECTION) as e:
            raise self._s3_error(e, record) from e

    @staticmethod
    def _s3_error(error: BaseException, record: S3ObjectRecord) -> JobError:
        where = f"s3://{record.bucket}/{record.key}" + (f"?versionId={record.version_id}" if record.version_id else "")
        if isinstance(error, botocore.exceptions.ClientError):
            code = str(error.response.get("Error", {}).get("Code", ""))
            status = str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in _NOT_FOUND or status == "404":
                return JobError("s3_not_found", f"{where}: {error}")
            if code in _DENIED or status == "403":
                return JobError("s3_access_denied", f"{where}: {error}")
            return JobError("s3_error", f"{where}: {error}")
        return JobError("s3_connection", f"{where}: {error}")

    @staticmethod
    def _result(verdict, rule_set, fmt, rows, nbytes, columns, checks, started) -> dict:
        return {
            "verdict": verdict,
            "rule_set": rule_set.name if rule_set else None,
            "format": fmt.name if fmt else None,
            "rows": rows,
            "bytes": nbytes,
            "columns": len(columns),
            "column_names": columns,
            "duration_ms": round((time.monotonic() - started) * 1000, 3),
            "checks": checks,
        }


def make_job(rules_path: str | None) -> DataQualityJob:
    """The daemon's default job; an unusable rules file raises ``RulesError`` (startup must stop)."""
    return DataQualityJob(load_rules(rules_path) if rules_path else None)
