"""boto3 clients, one per worker thread.

boto3 sessions are not thread-safe and client creation races on shared sessions, so each
thread builds its own session and client once.  Endpoint, region and credentials come from
the standard AWS environment (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3``, ...), which
boto3 reads itself.
"""

from __future__ import annotations

import threading

import boto3
from botocore.config import Config

DEFAULT_CONFIG = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"})


class ThreadLocalClients:
    """One client per thread, made by ``factory`` (default: a new session's ``service`` client)."""

    def __init__(self, service: str = "s3", config: Config = DEFAULT_CONFIG, factory=None):
        self._factory = factory or (lambda: boto3.session.Session().client(service, config=config))
        self._local = threading.local()

    def get(self):
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._factory()
        return client
