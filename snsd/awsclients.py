"""boto3 clients shared by the worker threads.

One client per service, built on first use under a lock and then shared: botocore's low-level
clients are thread-safe once built (boto3 documents passing one client to many threads), while
*building* one is slow, pure-Python work that holds the GIL for tens of milliseconds.  Building
one per worker thread made a cold daemon's first jobs starve the reactor (docs/performance.md).
Endpoint, region and credentials come from the standard AWS environment (``AWS_ENDPOINT_URL``,
``AWS_ENDPOINT_URL_S3``, ...), which boto3 reads itself.
"""

from __future__ import annotations

import threading

import boto3
from botocore.config import Config

# Enough pooled connections for every worker thread to hold one (botocore's default is 10).
MAX_POOL_CONNECTIONS = 64

DEFAULT_CONFIG = Config(
    connect_timeout=5,
    read_timeout=30,
    retries={"max_attempts": 3, "mode": "standard"},
    max_pool_connections=MAX_POOL_CONNECTIONS,
)


class SharedClient:
    """One client, made by ``factory`` (default: a new session's ``service`` client) the first
    time any thread asks for it."""

    def __init__(self, service: str = "s3", config: Config = DEFAULT_CONFIG, factory=None):
        self._factory = factory or (lambda: boto3.session.Session().client(service, config=config))
        self._lock = threading.Lock()
        self._client = None

    def get(self):
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._factory()
                client = self._client
        return client
