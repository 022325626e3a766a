"""An in-memory snsd, built by the daemon's own ``build_daemon``: the real endpoint, trust checks,
spool (SQLite :memory:, inline) and dispatcher, on a fake reactor and clock
(``MemoryReactorClock``), with jobs run inline and HTTP through ``treq.testing.StubTreq``."""

from __future__ import annotations

import json

from treq.testing import StubTreq
from twisted.application.service import Service
from twisted.internet.defer import maybeDeferred
from twisted.internet.testing import MemoryReactorClock

from snsd.admission import AckMode, BreakerMode
from snsd.config import Role, Settings
from snsd.daemon import build_daemon
from snsd.spool import SQLiteSpool
from tests.trust_helpers import NOW, RecordingResource, certificate_pem, make_certificate, result_of, rsa_key

CERT_PATH = b"/SimpleNotificationService-0123456789abcdef.pem"
CONFIRMED_ARN = "arn:aws:sns:us-east-1:123456789012:uploads:5a0b6b6c-0000-4000-8000-000000000001"
CONFIRM_XML = f"""<ConfirmSubscriptionResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">
  <ConfirmSubscriptionResult><SubscriptionArn>{CONFIRMED_ARN}</SubscriptionArn></ConfirmSubscriptionResult>
</ConfirmSubscriptionResponse>""".encode()


class InlinePool(Service):
    """Runs each job at once on the calling thread: keeps StubTreq tests synchronous."""

    name = "pool"

    def __init__(self, reactor=None, workers: int = 1, nice: int = 0):
        self.ran = 0

    def submit(self, fn, *args):
        self.ran += 1
        return maybeDeferred(fn, *args)

    def is_ready(self):
        return True

    def stop(self, join: bool = True):
        pass


def inline_spool(reactor, path, clock):
    return SQLiteSpool(None, path, clock=clock, inline=True)


def s3_message(*keys: str, bucket: str = "incoming") -> str:
    return json.dumps(
        {
            "Records": [
                {
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "eventName": "ObjectCreated:Put",
                    "eventTime": "2025-06-01T12:00:00.000Z",
                    "s3": {
                        "bucket": {"name": bucket},
                        "object": {"key": key, "size": 10, "eTag": "e", "sequencer": "01"},
                    },
                }
                for key in keys
            ]
        }
    )


class Snsd:
    def __init__(
        self,
        tmp_path,
        job=None,
        *,
        topics=(),
        breaker_mode="skip",
        max_pending=10_000,
        ack="spooled",
        basic_auth=None,
        verify_signatures=True,
        allow_raw_delivery=False,
        max_body=1024 * 1024,
        max_failures=2,
        max_age=3600.0,
        dedup_ttl=3600.0,
        role="all",
        queue=None,
        visibility_timeout=60,
        pool_factory=None,
        workers=4,
        admin_on_main_port=False,
    ):
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW.timestamp())
        self.aws = RecordingResource(
            {
                CERT_PATH: (200, certificate_pem(make_certificate(rsa_key()))),
                b"/": (200, CONFIRM_XML),
            }
        )
        self.aws_http = StubTreq(self.aws)
        self.results_path = tmp_path / "results.jsonl"
        self.jobs_seen = []

        def default_job(record):
            self.jobs_seen.append(record)
            return {"verdict": "passed", "key": record.key}

        self.settings = Settings(
            port="tcp:0",
            workers=workers,
            breaker_max_failures=max_failures,
            breaker_cooldown=30,
            breaker_mode=BreakerMode(breaker_mode),
            dry_run=True,
            results=str(self.results_path),
            job=job or default_job,
            builtin_job=False,
            spool=":memory:",
            max_pending=max_pending,
            ack=AckMode(ack),
            verify_signatures=verify_signatures,
            topic_arn=tuple(topics),
            allow_raw_delivery=allow_raw_delivery,
            max_body=max_body,
            basic_auth=basic_auth,
            max_age=max_age,
            dedup_ttl=dedup_ttl,
            role=Role(role),
            queue=queue.url if queue is not None else None,
            visibility_timeout=visibility_timeout,
            admin_on_main_port=admin_on_main_port,
        )
        self.daemon = build_daemon(
            self.clock,
            self.settings,
            http_client=self.aws_http,
            pool_factory=pool_factory or InlinePool,
            spool_factory=inline_spool,
            # --role listener/worker: the tests' in-memory queue (tests/sqs_fakes.py).
            queue_factory=lambda url, io: queue,
            # Checks made inline: the fake reactor runs no threads.
            offload_signatures=False,
            # Jobs run inline and at once here; the batch wait has its own tests (test_dispatcher).
            batch_wait=0,
            freeze_gc=False,
        )
        self.endpoint = self.daemon.endpoint
        self.verifier = self.endpoint.verifier
        self.breaker = self.daemon.breaker
        self.spool = self.daemon.spool
        self.sink = self.daemon.sink
        self.pool = self.daemon.pool
        self.dispatcher = self.daemon.dispatcher
        self.accepted = self.daemon.dedup
        self.admission = self.endpoint.admission
        self.policy = getattr(self.admission, "policy", None)  # a worker has no admission policy
        # What the main port and the admin listener serve, as their Sites do.
        self.client = StubTreq(self.daemon.http.factory.resource)
        admin = self.daemon.admin_http
        self.admin_client = StubTreq(admin.factory.resource) if admin is not None else self.client
        self.daemon.startService()

    def request(
        self,
        method: str,
        path: str = "/",
        body: bytes | dict | None = None,
        headers: dict | None = None,
        *,
        admin: bool = False,
    ):
        """One request to the main port, or with ``admin=True`` to the admin listener."""
        client = self.admin_client if admin else self.client
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        headers = {"Content-Type": ["text/plain; charset=UTF-8"], **{k: [v] for k, v in (headers or {}).items()}}
        d = client.request(method, "http://snsd.test" + path, data=body, headers=headers)
        self.flush()
        response = result_of(d)
        content = client.content(response)
        self.flush()
        raw = result_of(content)
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw
        return response.code, parsed, response.headers

    def post(self, body, headers=None):
        return self.request("POST", "/", body, headers)

    def admin(self, method: str, path: str, headers: dict | None = None):
        return self.request(method, path, headers=headers, admin=True)

    def flush(self):
        for _ in range(3):
            self.aws_http.flush()
            self.client.flush()
            self.admin_client.flush()

    def results(self):
        if not self.results_path.exists():
            return []
        return [json.loads(line) for line in self.results_path.read_text().splitlines()]

    def counts(self):
        return result_of(self.spool.counts())
