"""Prometheus metrics, declared in one place so every module counts the same way.

They live in the default registry, which ``/metrics`` serves.
"""

from functools import cache

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("snsd_requests_total", "SNS POSTs answered, by message type and HTTP status", ["type", "status"])
REQUEST_LATENCY = Histogram(
    "snsd_request_seconds",
    "Time to answer an SNS POST",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15),
)
JOBS = Counter("snsd_jobs_total", "Finished jobs, by outcome (ok/error) and verdict", ["outcome", "verdict"])
JOBS_RUNNING = Gauge("snsd_jobs_running", "Jobs running in the worker pool now")
JOB_DURATION = Histogram(
    "snsd_job_seconds",
    "Job wall time",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
SPOOL_PENDING = Gauge("snsd_spool_pending", "Records spooled and not yet started")
DEAD_LETTERS = Counter("snsd_dead_letters_total", "Records moved to the dead-letter table, by reason", ["reason"])
BREAKER_STATE = Gauge("snsd_breaker_state", "1 for the breaker's current state, 0 for the others", ["state"])
BREAKER_TRANSITIONS = Counter("snsd_breaker_transitions_total", "Breaker transitions", ["from_state", "to_state"])
BREAKER_NOT_PERMITTED = Counter("snsd_breaker_calls_not_permitted_total", "Records the breaker did not let run")
SIGNATURE_FAILURES = Counter(
    "snsd_signature_failures_total", "Messages refused by the trust checks, by reason", ["reason"]
)
CERT_CACHE = Counter("snsd_cert_cache_total", "Signing-certificate cache lookups", ["result"])
DUPLICATES = Counter("snsd_duplicates_total", "Messages recognised as duplicates by MessageId")
CONNECTIONS_REFUSED = Counter(
    "snsd_connections_refused_total",
    "Connections closed by the connection caps: peer_cap, all_busy (refused), made_room (a waiting one closed)",
    ["reason"],
)


# The labelled children counted once per request or job, looked up once.  labels() validates
# its arguments and takes a lock on every call; the children it returns are the same objects,
# and prometheus_client keeps every one of them anyway.
@cache
def requests(message_type: str, status: int):
    return REQUESTS.labels(type=message_type, status=str(status))


@cache
def jobs(outcome: str, verdict: str):
    return JOBS.labels(outcome=outcome, verdict=verdict)


@cache
def cert_cache(result: str):
    return CERT_CACHE.labels(result=result)


@cache
def connections_refused(reason: str):
    return CONNECTIONS_REFUSED.labels(reason=reason)


# -- SQS roles (snsd/sqs): on the /metrics of the process that does the work -------------------
OUTBOX_PENDING = Gauge("snsd_outbox_pending", "Listener: records spooled locally and not yet confirmed by SQS")
FORWARDED = Counter("snsd_forwarded_total", "Listener: records SQS confirmed (they then leave the local spool)")
FORWARD_FAILURES = Counter(
    "snsd_forward_failures_total", "Listener: SendMessageBatch calls or entries that failed, by what", ["what"]
)
SQS_RECEIVED = Counter("snsd_sqs_received_total", "Worker: messages received from the queue")
SQS_REDELIVERED = Counter("snsd_sqs_redelivered_total", "Worker: messages received with ApproximateReceiveCount > 1")
SQS_DELETED = Counter("snsd_sqs_deleted_total", "Worker: messages deleted from the queue, by why", ["why"])
SQS_DISCARDED = Counter(
    "snsd_sqs_discarded_total",
    "Worker: messages deleted without a job (malformed, TestEvent, ...), by reason",
    ["reason"],
)
SQS_VISIBILITY_EXTENSIONS = Counter(
    "snsd_sqs_visibility_extensions_total", "Worker: visibility-timeout extensions of messages whose jobs run"
)
SQS_RECEIVE_FAILURES = Counter("snsd_sqs_receive_failures_total", "Worker: ReceiveMessage calls that failed")
SQS_QUEUE_DEPTH = Gauge("snsd_sqs_queue_depth", "Worker: the queue's ApproximateNumberOfMessages, polled")
