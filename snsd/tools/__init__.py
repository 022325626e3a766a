"""The scripts an operator runs against their own topic and listener: ``snsd-wire``,
``snsd-publish`` and ``snsd-post``.

None of this is imported by the daemon; ``build_s3_event`` and ``load_message`` are shared by the
``publish`` and ``post`` scripts.  Development-only helpers (LocalStack on the host, ``make run``'s
driver) are in ``snsd_devtools/`` beside the package, not in the wheel.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote_plus

DEFAULT_EVENT_FILE = "event.json"


def build_s3_event(
    bucket: str,
    keys: list[str] | tuple[str, ...],
    region: str = "us-east-1",
    size: int = 1024,
    event_name: str = "ObjectCreated:Put",
    when: datetime | None = None,
) -> dict:
    """An S3 event notification (eventVersion 2.1) with one record per key.

    Keys are URL-encoded the way AWS does it (space -> ``+``, ``+`` -> ``%2B``), so a consumer that
    forgets to decode them gets the wrong key.
    """
    when = when or datetime.now(UTC)
    records = []
    for key in keys:
        records.append(
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": region,
                "eventTime": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
                "eventName": event_name,
                "userIdentity": {"principalId": "AWS:AIDAEXAMPLEPRINCIPAL"},
                "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                "responseElements": {
                    "x-amz-request-id": secrets.token_hex(8).upper(),
                    "x-amz-id-2": secrets.token_urlsafe(48),
                },
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "snsd-uploads",
                    "bucket": {
                        "name": bucket,
                        "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                        "arn": f"arn:aws:s3:::{bucket}",
                    },
                    "object": {
                        "key": quote_plus(key, safe="/"),
                        "size": size,
                        "eTag": secrets.token_hex(16),
                        "sequencer": secrets.token_hex(9).upper(),
                    },
                },
            }
        )
    return {"Records": records}


def load_message(path: str | None, bucket: str | None, keys: list[str] | None, region: str = "us-east-1") -> str:
    """The SNS ``Message`` to send: a generated event for ``bucket``/``keys``, else a file's text.

    Without either, ``event.json`` in the current directory is used if it exists, else a
    generated event for ``incoming``/``uploads/sample.csv``.
    """
    if keys:
        return json.dumps(build_s3_event(bucket or "incoming", keys, region))
    if path is None and Path(DEFAULT_EVENT_FILE).exists():
        path = DEFAULT_EVENT_FILE
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        json.loads(text)  # fail here, not at the receiver, on a broken file
        return text
    return json.dumps(build_s3_event(bucket or "incoming", ["uploads/sample.csv"], region))
