"""The SNS endpoint: HTTP in, trust checks and admission, HTTP out (the operator's routes: :mod:`snsd.ops`).

The endpoint reads a request, has the trust checks verify its envelope, hands it to
:class:`snsd.admission.Admission`, and maps the :class:`~snsd.admission.Outcome` to a status,
a body, headers and a log line; it holds no business rules.  Every answer
is a small JSON body; no input ever gets a traceback page.

SNS treats every 2xx and 4xx answer as delivered and retries only on 5xx or a 15 s
timeout, so 4xx is for input that is permanently bad and 5xx only for "try again later".
"""

from __future__ import annotations

import base64
import hmac

import orjson
from klein import Klein

from snsd import metrics
from snsd.admission import Admission, Kind, Outcome
from snsd.envelope import BadEnvelope, SNSEnvelope, parse_envelope, raw_delivery_envelope
from snsd.logs import Logger
from snsd.trust.errors import TrustError

log = Logger()

DEFAULT_MAX_BODY = 1024 * 1024


class Refused(Exception):
    """An answer decided before dispatch: a status, a JSON body, and a reason for the log."""

    def __init__(self, status: int, reason: str, headers: dict | None = None, body: dict | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}
        self.body = body if body is not None else {"error": reason}


class SNSEndpoint:
    app = Klein()

    def __init__(
        self,
        *,
        verifier,
        admission: Admission,
        clock,
        max_body: int = DEFAULT_MAX_BODY,
        basic_auth: str | None = None,
        allow_raw_delivery: bool = False,
    ):
        self.verifier = verifier
        self.admission = admission
        self.clock = clock
        self.max_body = max_body
        self._basic_auth = basic_auth.encode("utf-8") if basic_auth else None
        self.allow_raw_delivery = allow_raw_delivery

    def resource(self):
        return self.app.resource()

    # -- the SNS endpoint ------------------------------------------------------------------

    @app.route("/", methods=["POST"])
    async def receive(self, request):
        started = self.clock.seconds()
        message_type = "unknown"
        try:
            self._check_auth(request)
            closed = self.admission.refusal()  # starting or draining: before the body is even read
            if closed is not None:
                raise _refused(closed)
            body = self._read_body(request)
            if (request.getHeader("x-amz-sns-rawdelivery") or "").lower() == "true":
                envelope = self._raw_delivery(request, body)
            else:
                try:
                    envelope = parse_envelope(body, request.getHeader("x-amz-sns-message-type"))
                except BadEnvelope as e:
                    raise Refused(400, str(e)) from None
                message_type = envelope.type
                try:
                    await self.verifier.verify(envelope)
                except TrustError as e:
                    raise Refused(e.status, e.reason) from None
            status, answer, headers = _answer(await self.admission.admit(envelope), envelope)
        except Refused as refused:
            status, answer, headers = refused.status, refused.body, refused.headers
            log.info(
                "refused {status} {reason}",
                status=status,
                reason=refused.reason,
                message_type=message_type,
                peer=peer_of(request),
            )
        metrics.requests(message_type, status).inc()
        metrics.REQUEST_LATENCY.observe(self.clock.seconds() - started)
        return json_answer(request, status, answer, headers)

    def _raw_delivery(self, request, body: bytes) -> SNSEnvelope:
        if not self.allow_raw_delivery:
            raise Refused(403, "raw message delivery is not accepted: it cannot be verified")
        try:
            envelope = raw_delivery_envelope(
                body, request.getHeader("x-amz-sns-message-id"), request.getHeader("x-amz-sns-topic-arn")
            )
        except BadEnvelope as e:
            raise Refused(400, str(e)) from None
        if not self.verifier.allows_topic(envelope.topic_arn):
            raise Refused(403, "topic_not_allowed")
        log.warn(
            "raw delivery {message_id} from {topic} accepted UNVERIFIED (--allow-raw-delivery)",
            message_id=envelope.message_id,
            topic=envelope.topic_arn,
        )
        return envelope

    @app.handle_errors(Refused)
    def refused(self, request, failure):
        refused = failure.value
        return json_answer(request, refused.status, refused.body, refused.headers)

    @app.handle_errors(Exception)
    def unexpected(self, request, failure):
        return answer_error(request, failure)

    # -- helpers ---------------------------------------------------------------------------

    def _check_auth(self, request) -> None:
        require_basic_auth(request, self._basic_auth)

    def _read_body(self, request) -> bytes:
        if getattr(request, "body_too_large", False):
            raise Refused(413, f"body larger than {self.max_body} bytes")
        body = request.content.read(self.max_body + 1)
        if len(body) > self.max_body:
            raise Refused(413, f"body larger than {self.max_body} bytes")
        return body


def require_basic_auth(request, expected: bytes | None) -> None:
    """Raise :class:`Refused` (401) unless the request carries the ``USER:PASS`` expected (if any)."""
    if expected is None:
        return
    header = request.getHeader("authorization") or ""
    scheme, _, value = header.partition(" ")
    try:
        given = base64.b64decode(value.strip(), validate=True) if scheme.lower() == "basic" else b""
    except ValueError:
        given = b""
    if not hmac.compare_digest(given, expected):
        raise Refused(401, "authentication required", {"WWW-Authenticate": 'Basic realm="snsd"'})


def answer_error(request, failure) -> bytes:
    """A routing error (404, 405 ...) or an unexpected one as a JSON answer, never a traceback page."""
    from werkzeug.exceptions import HTTPException

    if isinstance(failure.value, HTTPException):
        code = failure.value.code or 500
        # Keep the exception's own headers (a 405's Allow, which RFC 9110 requires), not its
        # HTML Content-Type: the body is ours, JSON.
        headers = {name: value for name, value in failure.value.get_headers() if name.lower() != "content-type"}
        return json_answer(request, code, {"error": failure.value.name.lower()}, headers)
    log.failure(
        "unexpected error answering {method} {path}",
        failure,
        method=request.method.decode("ascii", "replace"),
        path=request.path.decode("ascii", "replace"),
    )
    return json_answer(request, 500, {"error": "internal error"})


def json_answer(request, status: int, body: dict, headers: dict | None = None) -> bytes:
    request.setResponseCode(status)
    request.setHeader("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    data = orjson.dumps(body)
    # Without a length Twisted frames every answer as chunked: more bytes, and a second write.
    request.setHeader("Content-Length", b"%d" % len(data))
    return data


def peer_of(request) -> str:
    peer = request.getClientAddress()
    return getattr(peer, "host", str(peer))


def _refused(outcome: Outcome) -> Refused | None:
    """The refusals, answered and logged (with the request's peer) by :meth:`SNSEndpoint.receive`."""
    kind = outcome.kind
    if kind is Kind.DRAINING:
        return Refused(503, "shutting down", {"Retry-After": "5"})
    if kind is Kind.STARTING:
        return Refused(503, "starting: the spool is not open yet", {"Retry-After": "5"})
    if kind is Kind.REFUSED:
        return Refused(outcome.status, outcome.reason)
    return None


def _answer(outcome: Outcome, envelope: SNSEnvelope) -> tuple[int, dict, dict]:
    """An outcome as (status, JSON body, headers), with its log line and metric."""
    refused = _refused(outcome)
    if refused is not None:
        raise refused
    kind = outcome.kind
    message_id, topic = envelope.message_id, envelope.topic_arn
    if kind in _TOOK_RECORDS:
        log.debug(
            "accepted {message_id} from {topic}: {jobs} records", message_id=message_id, topic=topic, jobs=outcome.jobs
        )
    if outcome.ignored:
        log.info(
            "ignored {ignored} records of {message_id} from {topic}: {reason}",
            ignored=outcome.ignored,
            jobs=outcome.jobs,
            message_id=message_id,
            topic=topic,
            reason=outcome.reason,
        )
    if kind in (Kind.ACCEPTED, Kind.SPOOLED, Kind.DONE):
        return 200, _with_ignored({"status": kind.value, "jobs": outcome.jobs}, outcome), {}
    if kind is Kind.DUPLICATE:
        metrics.DUPLICATES.inc()
        log.info("duplicate {message_id} from {topic}", message_id=message_id, topic=topic)
        return 200, {"status": "duplicate"}, {}
    if kind is Kind.IGNORED:
        log.info(
            "ignored {message_id} from {topic}: {reason}", message_id=message_id, topic=topic, reason=outcome.reason
        )
        return 200, {"status": "ignored", "reason": outcome.reason}, {}
    if kind is Kind.SKIPPED:
        log.info(
            "breaker open: skipped {message_id} ({jobs} records kept as dead letters)",
            message_id=message_id,
            jobs=outcome.jobs,
            topic=topic,
        )
        return 200, _with_ignored({"status": "skipped", "jobs": outcome.jobs}, outcome), {}
    if kind is Kind.CONFIRMED:
        log.info(
            "confirmed subscription {subscription_arn} to {topic}",
            subscription_arn=outcome.subscription_arn,
            topic=topic,
            message_id=message_id,
        )
        return 200, {"status": "confirmed", "subscription_arn": outcome.subscription_arn}, {}
    if kind is Kind.UNSUBSCRIBED:
        log.info("unsubscribe confirmation for {topic}; not re-subscribing", topic=topic, message_id=message_id)
        return 200, {"status": "ok"}, {}
    if kind is Kind.REJECTED:
        return 503, {"error": "circuit breaker open"}, {"Retry-After": str(outcome.retry_after)}
    if kind is Kind.BACKPRESSURE:
        return 503, {"error": "too many pending records", "detail": outcome.detail}, {"Retry-After": "20"}
    if kind is Kind.RUNNING:
        return 503, {"error": "jobs still running", "jobs": outcome.jobs}, {"Retry-After": "10"}
    if kind is Kind.FAILED:
        return 500, {"error": "job failed", "jobs": outcome.jobs}, {}
    raise AssertionError(f"no answer for {kind}")


def _with_ignored(body: dict, outcome: Outcome) -> dict:
    """A message's answer names the records it left out, when it left some out."""
    if outcome.ignored:
        body["ignored"] = outcome.ignored
        body["reason"] = outcome.reason
    return body


# Outcomes whose records were spooled: each is logged as accepted (debug) before its answer.
# A tuple, not a set: membership by identity (a set calls Enum.__hash__, Python code, per message).
_TOOK_RECORDS = (Kind.ACCEPTED, Kind.SPOOLED, Kind.DONE, Kind.RUNNING, Kind.FAILED)
