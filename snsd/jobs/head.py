"""A minimal job: report the object's metadata from ``head_object``.

Useful as ``--job snsd.jobs.head:head_object`` when only arrival matters.
"""

from __future__ import annotations

from snsd.awsclients import SharedClient
from snsd.records import S3ObjectRecord

_s3 = SharedClient("s3")


def head_object(record: S3ObjectRecord) -> dict:
    kwargs = {"Bucket": record.bucket, "Key": record.key}
    if record.version_id:
        kwargs["VersionId"] = record.version_id
    head = _s3.get().head_object(**kwargs)
    return {
        "content_length": head.get("ContentLength"),
        "content_type": head.get("ContentType"),
        "etag": head.get("ETag"),
        "last_modified": head["LastModified"].isoformat() if head.get("LastModified") else None,
        "version_id": head.get("VersionId"),
    }
