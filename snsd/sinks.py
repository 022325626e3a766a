"""Where finished jobs are recorded: a JSON-lines file (dry run) or S3.

Both implement :class:`snsd.protocols.Sink`.  They are called from worker threads:
``write(line)`` per finished job, or ``write_many(lines)`` for a batch of short jobs.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Sequence

import orjson

from snsd.awsclients import SharedClient


class JSONLinesSink:
    """Appends one whole JSON line per result; a lock keeps lines from interleaving.

    A write that fails part way (a full disk) leaves its fragment behind, and so may a process
    killed mid-write: the next line then starts on a line of its own, so a fragment can never
    swallow the result after it.  The failed result itself is the caller's to keep (the
    dispatcher dead-letters it as ``sink_error``).
    """

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        # Unbuffered: a failed write leaves nothing in a buffer to surface later, after a result
        # the caller was told was not written.
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._torn = _ends_mid_line(path)

    def write(self, line: dict) -> None:
        self._append(_json_line(line))

    def write_many(self, lines: Sequence[dict]) -> None:
        """Append a batch's results in one write.

        A write is a system call, and the thread lets go of the GIL for it; one per result made
        the reactor wait to get the GIL back once per result (docs/performance.md)."""
        self._append(b"".join(_json_line(line) for line in lines))

    def _append(self, data: bytes) -> None:
        with self._lock:
            if self._torn:
                data = b"\n" + data
            left = memoryview(data)
            try:
                # On disk (in the OS's hands) before the records leave the spool, so a killed
                # process loses nothing.
                while left:
                    left = left[os.write(self._fd, left) :]
            except OSError:
                self._torn = self._torn or len(left) < len(data)
                raise
            self._torn = False

    @property
    def closed(self) -> bool:
        return self._fd is None

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def describe(self) -> str:
        return f"file {self.path}"


def _ends_mid_line(path: str) -> bool:
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def _json_line(line: dict) -> bytes:
    try:
        # orjson: a fifth of the stdlib's time, in a thread that holds the GIL while it encodes.
        return orjson.dumps(line, default=str, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        # What orjson refuses and the stdlib takes (an integer past 64 bits in a custom job's result).
        return (json.dumps(line, ensure_ascii=False, separators=(",", ":"), default=str) + "\n").encode("utf-8")


def _json_document(line: dict) -> bytes:
    """Standard JSON, indented: orjson writes NaN and infinities (a number column's observed
    values) as null, where the stdlib writes NaN, which strict parsers (JavaScript, Go, Athena) refuse."""
    try:
        return orjson.dumps(line, default=str, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        # An integer past 64 bits in a custom job's result: the stdlib takes it.
        return json.dumps(line, ensure_ascii=False, indent=2, default=str).encode("utf-8")


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def result_key(prefix: str, bucket: str, key: str, version_id: str | None = None, etag: str | None = None) -> str:
    """Where the result of one upload goes: derived from the object's identity, nothing else."""
    identity = version_id or (etag.strip('"') if etag else None)
    if not identity:
        return f"{prefix}{bucket}/{key}.dq.json"
    # Version ids and ETags are URL-safe in practice; anything else is replaced, never dropped.
    return f"{prefix}{bucket}/{key}/{_UNSAFE.sub('_', identity)}.dq.json"


class S3ResultSink:
    """Writes each result as ``s3://<bucket>/<prefix><source bucket>/<source key>/<version>.dq.json``.

    The key is the object's identity: bucket, key, and the version id, or the ETag where the
    bucket has no versioning (neither: ``<source key>.dq.json``).  Delivery is at least once (a
    rerun after a crash, an SQS redelivery): a rerun of the same upload rewrites the same document,
    and a later upload of the same key gets a document of its own, so a late rerun of the old one
    can never overwrite the new one's result (docs/scaling.md)."""

    def __init__(self, bucket: str, prefix: str = "dq-results/", client: SharedClient | None = None):
        self.bucket = bucket
        self.prefix = prefix
        self._s3 = client or SharedClient("s3")

    def key_for(self, line: dict) -> str:
        return result_key(self.prefix, line["bucket"], line["key"], line.get("version_id"), line.get("etag"))

    def write(self, line: dict) -> None:
        body = _json_document(line)
        self._s3.get().put_object(Bucket=self.bucket, Key=self.key_for(line), Body=body, ContentType="application/json")

    def write_many(self, lines: Sequence[dict]) -> None:
        """One object per result, so one PUT each: S3 has no batch write.  The first failure
        stops the batch; the caller writes the results one by one then."""
        for line in lines:
            self.write(line)

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def make_sink(settings):
    """The sink the :class:`~snsd.config.Settings` ask for: the JSONL file in dry-run mode, else S3."""
    if settings.dry_run:
        return JSONLinesSink(settings.results)
    return S3ResultSink(settings.results_bucket, settings.results_prefix)
