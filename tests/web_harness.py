"""An in-memory snsd: the real endpoint, trust checks, spool (SQLite :memory:, inline) and
dispatcher, on a fake clock, with jobs run inline and HTTP through ``treq.testing.StubTreq``."""

from __future__ import annotations

import json

from treq.testing import StubTreq
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock

from snsd.admission import Admission, BreakerPolicy, Readiness
from snsd.breaker import CircuitBreaker
from snsd.dispatcher import Dispatcher
from snsd.sinks import JSONLinesSink
from snsd.spool import SQLiteSpool
from snsd.trust.certs import CertificateStore
from snsd.trust.confirm import SubscriptionConfirmer
from snsd.trust.dedup import AcceptedIds, DedupCache
from snsd.trust.hosts import HostTrust
from snsd.trust.topics import TopicAllowList
from snsd.trust.verifier import MessageVerifier
from snsd.web import SNSEndpoint
from tests.trust_helpers import NOW, RecordingResource, certificate_pem, make_certificate, result_of, rsa_key

CERT_PATH = b"/SimpleNotificationService-0123456789abcdef.pem"
CONFIRMED_ARN = "arn:aws:sns:us-east-1:123456789012:uploads:5a0b6b6c-0000-4000-8000-000000000001"
CONFIRM_XML = f"""<ConfirmSubscriptionResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">
  <ConfirmSubscriptionResult><SubscriptionArn>{CONFIRMED_ARN}</SubscriptionArn></ConfirmSubscriptionResult>
</ConfirmSubscriptionResponse>""".encode()


class InlinePool:
    """Runs each job at once on the calling thread: keeps StubTreq tests synchronous."""

    def __init__(self):
        self.ran = 0

    def submit(self, fn, *args):
        self.ran += 1
        return maybeDeferred(fn, *args)

    def is_ready(self):
        return True


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
    ):
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        self.aws = RecordingResource(
            {
                CERT_PATH: (200, certificate_pem(make_certificate(rsa_key()))),
                b"/": (200, CONFIRM_XML),
            }
        )
        self.aws_http = StubTreq(self.aws)
        host_trust = HostTrust(())
        self.verifier = MessageVerifier(
            CertificateStore(self.aws_http, self.clock, host_trust),
            host_trust,
            TopicAllowList(topics),
            self.clock,
            verify_signatures=verify_signatures,
            max_age=max_age,
        )
        self.breaker = CircuitBreaker(self.clock, max_failures=max_failures, cooldown=30)
        self.spool = SQLiteSpool(None, ":memory:", clock=self.clock, inline=True)
        self.results_path = tmp_path / "results.jsonl"
        self.sink = JSONLinesSink(str(self.results_path))
        self.pool = InlinePool()
        self.jobs_seen = []

        def default_job(record):
            self.jobs_seen.append(record)
            return {"verdict": "passed", "key": record.key}

        self.policy = BreakerPolicy(self.breaker, breaker_mode)
        self.dispatcher = Dispatcher(
            self.spool,
            self.pool,
            self.breaker,
            job or default_job,
            self.sink,
            self.clock,
            workers=4,
            policy=self.policy,
            max_pending=max_pending,
            # Jobs run inline and at once here; the batch wait has its own tests (test_dispatcher).
            batch_wait=0,
        )
        self.accepted = AcceptedIds(DedupCache(self.clock, ttl=dedup_ttl), self.spool, max_age=max_age)
        self.admission = Admission(
            self.dispatcher,
            self.accepted,
            self.policy,
            SubscriptionConfirmer(self.aws_http, host_trust, clock=self.clock),
            self.clock,
            ack=ack,
        )
        self.endpoint = SNSEndpoint(
            verifier=self.verifier,
            admission=self.admission,
            readiness=Readiness(self.pool, self.dispatcher),
            breaker=self.breaker,
            clock=self.clock,
            basic_auth=basic_auth,
            allow_raw_delivery=allow_raw_delivery,
            max_body=max_body,
        )
        self.client = StubTreq(self.endpoint.resource())
        self.dispatcher.start(result_of(self.spool.open(dedup_ttl=dedup_ttl)))

    def request(self, method: str, path: str = "/", body: bytes | dict | None = None, headers: dict | None = None):
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        headers = {"Content-Type": ["text/plain; charset=UTF-8"], **{k: [v] for k, v in (headers or {}).items()}}
        d = self.client.request(method, "http://snsd.test" + path, data=body, headers=headers)
        self.flush()
        response = result_of(d)
        content = self.client.content(response)
        self.flush()
        raw = result_of(content)
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw
        return response.code, parsed, response.headers

    def post(self, body, headers=None):
        return self.request("POST", "/", body, headers)

    def flush(self):
        for _ in range(3):
            self.aws_http.flush()
            self.client.flush()

    def results(self):
        if not self.results_path.exists():
            return []
        return [json.loads(line) for line in self.results_path.read_text().splitlines()]

    def counts(self):
        return result_of(self.spool.counts())
