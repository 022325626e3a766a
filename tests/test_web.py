"""The HTTP surface, in memory: StubTreq against the Klein resource, real trust checks with a
real RSA key, a real (in-memory) spool, and a fake clock."""

import base64
import gc
import json
from datetime import timedelta

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import globalLogPublisher

from snsd.admission import AFTER_JOB_WAIT
from snsd.trust.dedup import DedupCache
from tests.trust_helpers import NOW, TOPIC, notification, result_of, signed, subscription_confirmation
from tests.web_harness import CONFIRMED_ARN, Snsd, s3_message


@pytest.fixture
def snsd(tmp_path):
    return Snsd(tmp_path)


def signed_notification(*keys, **kwargs):
    return signed(notification(s3_message(*keys), **kwargs))


def test_a_signed_notification_is_spooled_run_and_recorded(snsd):
    status, body, _ = snsd.post(signed_notification("a.csv", "b.csv"))
    assert (status, body) == (200, {"status": "accepted", "jobs": 2})
    assert [r.key for r in snsd.jobs_seen] == ["a.csv", "b.csv"]
    assert [line["status"] for line in snsd.results()] == ["ok", "ok"]
    assert snsd.counts() == {"records": 0, "dead_letters": 0}


def test_text_plain_content_type_is_accepted_and_no_json_type_required(snsd):
    status, _, _ = snsd.post(signed_notification("a.csv"), headers={"Content-Type": "text/plain; charset=UTF-8"})
    assert status == 200


@pytest.mark.parametrize(
    "encoded,key",
    [("a+b.csv", "a b.csv"), ("a%20b.csv", "a b.csv"), ("a%2Bb.csv", "a+b.csv"), ("%C3%A9t%C3%A9.csv", "été.csv")],
)
def test_keys_are_decoded_before_the_job_sees_them(snsd, encoded, key):
    snsd.post(signed_notification(encoded))
    assert snsd.jobs_seen[-1].key == key


def test_the_certificate_is_fetched_once_for_many_messages(snsd):
    for i in range(5):
        assert snsd.post(signed_notification(f"k{i}"))[0] == 200
    cert_fetches = [r for r in snsd.aws.requests if r.endswith(".pem")]
    assert len(cert_fetches) == 1


def test_test_event_is_acknowledged_and_ignored(snsd):
    message = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "incoming"})
    status, body, _ = snsd.post(signed(notification(message)))
    assert (status, body["status"]) == (200, "ignored")
    assert snsd.jobs_seen == []


@pytest.mark.parametrize(
    "message",
    ["plain text", json.dumps({"Records": [{"eventVersion": "2.1", "eventName": "ObjectRemoved:Delete", "s3": {}}]})],
)
def test_other_messages_are_ignored(snsd, message):
    status, body, _ = snsd.post(signed(notification(message)))
    assert (status, body["status"]) == (200, "ignored")
    assert snsd.jobs_seen == []


@pytest.mark.parametrize(
    "body,reason",
    [
        (b"this is not json", "body is not JSON"),
        ({"MessageId": "x"}, "missing field: Type"),
        ({"Type": "Notification", "MessageId": "x"}, "missing field: TopicArn"),
        ({"Type": "Chatter", "MessageId": "x"}, "unknown Type: Chatter"),
    ],
)
def test_bad_input_is_400_with_a_reason(snsd, body, reason):
    status, answer, _ = snsd.post(body)
    assert status == 400
    assert answer == {"error": reason}


def test_a_field_present_with_the_wrong_type_is_not_reported_missing(snsd):
    status, answer, _ = snsd.post({"Type": 1, "MessageId": [], "TopicArn": {}, "Message": 5})
    assert (status, answer) == (400, {"error": "field Type must be a string"})
    fields = signed_notification("a.csv")
    fields["MessageId"] = []
    status, answer, _ = snsd.post(fields)
    assert (status, answer) == (400, {"error": "field MessageId must be a string"})
    assert snsd.jobs_seen == []


def object_created(**changes):
    """One S3 notification record with ``changes`` applied, a dotted name reaching into ``s3``."""
    record = json.loads(s3_message("a.csv"))["Records"][0]
    for dotted, value in changes.items():
        *parents, name = dotted.split(".")
        target = record
        for parent in parents:
            target = target[parent]
        target[name] = value
    return json.dumps({"Records": [record]})


def eventbridge_created(bucket, obj):
    detail = {"bucket": bucket, "object": obj, "reason": "PutObject"}
    return json.dumps({"source": "aws.s3", "detail-type": "Object Created", "detail": detail})


@pytest.mark.parametrize(
    "message",
    [
        object_created(eventName=5),
        object_created(eventName={"name": "ObjectCreated:Put"}),
        object_created(**{"s3.bucket": "incoming"}),
        object_created(**{"s3.bucket": ["incoming"]}),
        object_created(**{"s3.object": "a.csv"}),
        object_created(s3="incoming/a.csv"),
        eventbridge_created("incoming", {"key": "a.csv"}),
        eventbridge_created({"name": "incoming"}, "a.csv"),
        eventbridge_created(["incoming"], ["a.csv"]),
    ],
)
def test_a_malformed_s3_record_in_a_signed_notification_is_ignored_not_a_500(snsd, message):
    # A 5xx would have SNS retry a message that can never succeed.
    failures = []

    def observe(event):
        if event.get("log_failure") is not None:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        status, body, _ = snsd.post(signed(notification(message)))
    finally:
        globalLogPublisher.removeObserver(observe)
    assert (status, body.get("status")) == (200, "ignored")
    assert body["reason"]
    assert snsd.jobs_seen == []
    assert failures == []


def test_a_type_header_contradicting_the_body_is_400(snsd):
    status, answer, _ = snsd.post(
        signed_notification("a"), headers={"x-amz-sns-message-type": "SubscriptionConfirmation"}
    )
    assert status == 400 and "header" in answer["error"]
    assert snsd.jobs_seen == []


def test_other_methods_on_root_are_405(snsd):
    for method in ("GET", "PUT", "DELETE"):
        assert snsd.request(method, "/")[0] == 405


@pytest.mark.parametrize(
    "method,path,allowed",
    [
        ("PUT", "/", {"POST"}),
        ("GET", "/", {"POST"}),
        ("POST", "/healthz", {"GET", "HEAD"}),
        ("GET", "/breaker/open", {"POST"}),
    ],
)
def test_a_405_says_which_methods_are_allowed(snsd, method, path, allowed):
    # RFC 9110 15.5.6: a 405 answer must carry an Allow header.
    status, body, headers = snsd.request(method, path, admin=path.startswith("/breaker"))
    assert (status, body) == (405, {"error": "method not allowed"})
    (allow,) = headers.getRawHeaders("Allow")
    assert {m.strip() for m in allow.split(",")} == allowed


def test_unknown_paths_are_404_json(snsd):
    status, body, _ = snsd.request("GET", "/nope")
    assert status == 404 and body == {"error": "not found"}


def test_bodies_over_the_limit_are_413(tmp_path):
    snsd = Snsd(tmp_path, max_body=2048)
    fields = signed_notification("a.csv")
    fields["Message"] = s3_message(*[f"key-{i:04d}.csv" for i in range(40)])
    status, body, _ = snsd.post(fields)
    assert status == 413 and "2048" in body["error"]
    assert snsd.jobs_seen == []


def test_a_forged_signature_is_403_and_never_dispatched(snsd):
    fields = signed_notification("a.csv")
    fields["Message"] = s3_message("evil.csv")
    status, body, _ = snsd.post(fields)
    assert (status, body) == (403, {"error": "bad_signature"})
    assert snsd.jobs_seen == [] and snsd.counts() == {"records": 0, "dead_letters": 0}


def test_an_unsigned_message_is_403(snsd):
    status, _, _ = snsd.post(notification(s3_message("a.csv")))
    assert status == 403
    assert snsd.jobs_seen == []


def test_a_certificate_that_cannot_be_fetched_is_5xx_and_the_retry_is_accepted(snsd):
    snsd.aws.routes.pop(b"/SimpleNotificationService-0123456789abcdef.pem")
    fields = signed_notification("a.csv")
    status, _, _ = snsd.post(fields)
    assert 500 <= status < 600
    assert snsd.jobs_seen == []
    from tests.trust_helpers import certificate_pem, make_certificate, rsa_key

    snsd.aws.routes[b"/SimpleNotificationService-0123456789abcdef.pem"] = (
        200,
        certificate_pem(make_certificate(rsa_key())),
    )
    snsd.clock.advance(20)  # SNS's first retry comes 20 s later; a failed download is remembered for 10 s
    assert snsd.post(fields)[0] == 200
    assert len(snsd.jobs_seen) == 1


def test_a_topic_not_on_the_allow_list_is_403(tmp_path):
    snsd = Snsd(tmp_path, topics=("arn:aws:sns:*:123456789012:other-*",))
    status, body, _ = snsd.post(signed_notification("a.csv"))
    assert (status, body) == (403, {"error": "topic_not_allowed"})
    assert snsd.aws.requests == []  # refused before any certificate fetch


def test_raw_delivery_is_refused(snsd):
    status, _, _ = snsd.post(s3_message("a.csv").encode(), headers={"x-amz-sns-rawdelivery": "true"})
    assert status == 403
    assert snsd.jobs_seen == []


def test_raw_delivery_is_accepted_only_when_allowed_and_from_an_allowed_topic(tmp_path):
    snsd = Snsd(tmp_path, allow_raw_delivery=True, topics=(TOPIC,))
    headers = {"x-amz-sns-rawdelivery": "true", "x-amz-sns-message-id": "raw-1", "x-amz-sns-topic-arn": TOPIC}
    status, body, _ = snsd.post(s3_message("raw.csv").encode(), headers=headers)
    assert (status, body) == (200, {"status": "accepted", "jobs": 1})
    assert snsd.jobs_seen[0].key == "raw.csv" and snsd.jobs_seen[0].message_id == "raw-1"
    other = {**headers, "x-amz-sns-message-id": "raw-2", "x-amz-sns-topic-arn": TOPIC + "-other"}
    assert snsd.post(s3_message("x.csv").encode(), headers=other)[0] == 403
    no_id = {k: v for k, v in headers.items() if k != "x-amz-sns-message-id"}
    assert snsd.post(s3_message("y.csv").encode(), headers=no_id)[0] == 400
    assert len(snsd.jobs_seen) == 1


def test_duplicates_get_200_duplicate_and_no_new_job(snsd):
    fields = signed_notification("a.csv")
    assert snsd.post(fields)[1]["status"] == "accepted"
    assert snsd.post(fields)[1] == {"status": "duplicate"}
    assert len(snsd.jobs_seen) == 1


def test_a_duplicate_the_bounded_memory_has_let_go_of_is_still_caught_by_the_spool(snsd):
    snsd.accepted.memory = DedupCache(snsd.clock, max_entries=1)
    first = signed_notification("a.csv")
    assert snsd.post(first)[1]["status"] == "accepted"
    assert snsd.post(signed_notification("b.csv"))[1]["status"] == "accepted"  # pushes a.csv's id out
    assert first["MessageId"] not in snsd.accepted
    assert snsd.post(first)[1] == {"status": "duplicate"}
    assert [r.key for r in snsd.jobs_seen] == ["a.csv", "b.csv"]


def test_subscription_confirmation_gets_the_subscribe_url_and_logs_the_arn(snsd):
    status, body, _ = snsd.post(signed(subscription_confirmation()))
    assert (status, body) == (200, {"status": "confirmed", "subscription_arn": CONFIRMED_ARN})
    assert any("Action=ConfirmSubscription" in r for r in snsd.aws.requests)


def test_a_subscribe_url_on_an_untrusted_host_is_never_requested(snsd):
    url = f"https://evil.example/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=t"
    status, _, _ = snsd.post(signed(subscription_confirmation(subscribe_url=url)))
    assert status == 403
    assert not any("Action=ConfirmSubscription" in r for r in snsd.aws.requests)


def test_a_failed_confirmation_is_5xx_so_sns_sends_it_again(snsd):
    snsd.aws.routes[b"/"] = (500, b"<Error/>")
    status, _, _ = snsd.post(signed(subscription_confirmation()))
    assert 500 <= status < 600


def test_unsubscribe_confirmation_is_logged_and_not_followed(snsd):
    fields = signed(subscription_confirmation(message_type="UnsubscribeConfirmation"))
    status, body, _ = snsd.post(fields)
    assert (status, body) == (200, {"status": "ok"})
    assert not any("Action=ConfirmSubscription" in r for r in snsd.aws.requests)


def failing_job(record):
    raise FileNotFoundError(f"no such key {record.key}")


def open_breaker(snsd):
    for i in range(2):
        snsd.post(signed_notification(f"missing-{i}.csv"))
    assert snsd.breaker.snapshot()["state"] == "open"


def test_breaker_skip_mode_answers_skipped_and_keeps_dead_letters(tmp_path):
    snsd = Snsd(tmp_path, failing_job, breaker_mode="skip")
    open_breaker(snsd)
    later = signed_notification("later.csv")
    status, body, _ = snsd.post(later)
    assert (status, body) == (200, {"status": "skipped", "jobs": 1})
    assert snsd.counts() == {"records": 0, "dead_letters": 3}
    snsd.accepted.release(later["MessageId"])  # as if the bounded memory had let go of it
    assert snsd.post(later)[1] == {"status": "duplicate"}
    assert snsd.counts() == {"records": 0, "dead_letters": 3}


def test_breaker_reject_mode_answers_503_with_retry_after(tmp_path):
    snsd = Snsd(tmp_path, failing_job, breaker_mode="reject")
    open_breaker(snsd)
    snsd.clock.advance(10)
    fields = signed_notification("later.csv")
    status, _, headers = snsd.post(fields)
    assert status == 503
    assert headers.getRawHeaders("Retry-After") == ["20"]
    snsd.breaker.reset()
    assert snsd.post(fields)[0] == 200  # the retry is not taken for a duplicate


def test_breaker_spool_mode_answers_spooled_and_keeps_the_record(tmp_path):
    snsd = Snsd(tmp_path, failing_job, breaker_mode="spool")
    open_breaker(snsd)
    status, body, _ = snsd.post(signed_notification("later.csv"))
    assert (status, body) == (200, {"status": "spooled", "jobs": 1})
    assert snsd.counts()["records"] == 1


def test_backpressure_503_past_max_pending(tmp_path):
    snsd = Snsd(tmp_path, breaker_mode="spool", max_pending=2)
    snsd.breaker.force_open()
    assert snsd.post(signed_notification("a", "b"))[0] == 200
    status, _, headers = snsd.post(signed_notification("c"))
    assert status == 503 and headers.getRawHeaders("Retry-After")
    assert snsd.counts()["records"] == 2


def test_breaker_admin_endpoints(tmp_path):
    snsd = Snsd(tmp_path, failing_job)
    status, body, _ = snsd.admin("GET", "/breaker")
    assert status == 200
    assert body == {
        "state": "closed",
        "active": False,
        "forced": False,
        "consecutive_failures": 0,
        "last_failure_time": None,
        "cooldown_remaining": 0.0,
        "cooldown": 30,
    }
    open_breaker(snsd)
    body = snsd.admin("GET", "/breaker")[1]
    assert body["state"] == "open" and body["active"] is True and body["consecutive_failures"] == 2
    assert body["last_failure_time"] == "2025-06-01T12:00:00.000Z" and body["cooldown_remaining"] == 30
    assert snsd.admin("POST", "/breaker/reset")[1]["state"] == "closed"
    assert snsd.admin("POST", "/breaker/open")[1]["state"] == "open"
    assert snsd.admin("GET", "/breaker/reset")[1]["state"] == "closed"


def test_health_and_readiness(snsd):
    assert snsd.request("GET", "/healthz") == (200, {"status": "alive"}, snsd.request("GET", "/healthz")[2])
    status, body, _ = snsd.request("GET", "/readyz")
    assert status == 200 and body["status"] == "ready"
    snsd.dispatcher.drain(30)
    assert snsd.request("GET", "/readyz")[0] == 503


def test_while_draining_new_posts_get_503(snsd):
    snsd.dispatcher.drain(30)
    status, _, headers = snsd.post(signed_notification("a.csv"))
    assert status == 503 and headers.getRawHeaders("Retry-After")
    assert snsd.jobs_seen == []


def test_basic_auth_when_configured(tmp_path):
    snsd = Snsd(tmp_path, basic_auth="sns:s3cret")
    status, _, headers = snsd.post(signed_notification("a.csv"))
    assert status == 401 and headers.getRawHeaders("WWW-Authenticate") == ['Basic realm="snsd"']
    wrong = {"Authorization": "Basic " + base64.b64encode(b"sns:wrong").decode()}
    assert snsd.post(signed_notification("a.csv"), headers=wrong)[0] == 401
    right = {"Authorization": "Basic " + base64.b64encode(b"sns:s3cret").decode()}
    assert snsd.post(signed_notification("a.csv"), headers=right)[0] == 200
    assert snsd.admin("GET", "/breaker")[0] == 401
    assert snsd.admin("GET", "/breaker", headers=right)[0] == 200


def test_basic_auth_off_needs_no_credentials(snsd):
    assert snsd.post(signed_notification("a.csv"))[0] == 200


def test_ack_after_job_answers_200_when_jobs_succeed_and_500_when_one_fails(tmp_path):
    def job(record):
        if "bad" in record.key:
            raise ValueError("unreadable")
        return {}

    snsd = Snsd(tmp_path, job, ack="after-job", max_failures=10)
    assert snsd.post(signed_notification("good.csv"))[1] == {"status": "done", "jobs": 1}
    fields = signed_notification("good2.csv", "bad.csv")
    assert snsd.post(fields)[0] == 500
    assert snsd.counts()["dead_letters"] == 1
    assert snsd.post(fields)[0] == 500  # SNS's retry runs again: not taken for a duplicate
    assert snsd.counts()["dead_letters"] == 2


class HeldPool:
    """Holds every job until the test lets it run."""

    def __init__(self):
        self.held = []

    def submit(self, fn, *args):
        d = Deferred()
        self.held.append((d, fn, args))
        return d

    def run_held(self):
        for d, fn, args in self.held:
            d.callback(fn(*args))
        self.held = []

    def is_ready(self):
        return True


def test_ack_after_job_answers_503_to_jobs_still_running_and_the_job_still_reports(tmp_path):
    unhandled = []

    def observe(event):
        failure = event.get("log_failure")
        if failure is not None and failure.check(CancelledError):
            unhandled.append(event)

    snsd = Snsd(tmp_path, ack="after-job")
    snsd.dispatcher.pool = pool = HeldPool()
    globalLogPublisher.addObserver(observe)
    try:
        answer = snsd.client.request(
            "POST", "http://snsd.test/", data=json.dumps(signed_notification("slow.csv")).encode()
        )
        snsd.flush()
        snsd.clock.advance(AFTER_JOB_WAIT)
        snsd.flush()
        response = result_of(answer)
        assert response.code == 503
        assert json.loads(result_of(response.content())) == {"error": "jobs still running", "jobs": 1}
        assert response.headers.getRawHeaders("Retry-After") == ["10"]
        pool.run_held()
        snsd.flush()
        assert [line["key"] for line in snsd.results()] == ["slow.csv"]
        gc.collect()  # an abandoned, failed Deferred reports "Unhandled error" when collected
    finally:
        globalLogPublisher.removeObserver(observe)
    assert unhandled == []


@pytest.mark.parametrize("size", [1e300, 2**64, -5])
def test_a_size_no_object_can_have_is_dropped_not_a_500(snsd, size):
    event = json.loads(s3_message("big.csv"))
    event["Records"][0]["s3"]["object"]["size"] = size
    status, body, _ = snsd.post(signed(notification(json.dumps(event))))
    assert (status, body) == (200, {"status": "accepted", "jobs": 1})
    assert [(r.key, r.size) for r in snsd.jobs_seen] == [("big.csv", None)]
    assert snsd.dispatcher.pending == 0


def test_metrics_are_served(snsd):
    snsd.post(signed_notification("a.csv"))
    status, body, _ = snsd.admin("GET", "/metrics")
    assert status == 200
    assert b'snsd_requests_total{status="200",type="Notification"}' in body


def test_posts_before_the_spool_is_open_get_503(snsd):
    snsd.dispatcher.ready = False
    status, body, headers = snsd.post(signed_notification("a.csv"))
    assert status == 503 and "spool" in body["error"] and headers.getRawHeaders("Retry-After")
    assert snsd.jobs_seen == []


def test_one_malformed_record_no_longer_drops_its_valid_neighbours(snsd):
    # Issue 15 item 4: answered 200 "ignored" before, and the good record never ran (SNS does not retry a 200).
    event = json.loads(s3_message("good.csv", "keyless.csv"))
    del event["Records"][1]["s3"]["object"]["key"]
    lines = []
    globalLogPublisher.addObserver(lines.append)
    try:
        status, body, _ = snsd.post(signed(notification(json.dumps(event))))
    finally:
        globalLogPublisher.removeObserver(lines.append)
    assert (status, body) == (
        200,
        {"status": "accepted", "jobs": 1, "ignored": 1, "reason": "S3 record without bucket or key"},
    )
    assert [r.key for r in snsd.jobs_seen] == ["good.csv"]
    (logged,) = [e for e in lines if e.get("log_format", "").startswith("ignored {ignored} records")]
    assert (logged["ignored"], logged["jobs"], logged["reason"]) == (1, 1, "S3 record without bucket or key")


def test_a_message_with_more_records_than_max_pending_is_taken_when_nothing_waits(tmp_path):
    # Issue 15 item 5: with nothing pending it got 503 on every try, a permanent condition answered as temporary.
    snsd = Snsd(tmp_path, breaker_mode="spool", max_pending=2)
    snsd.breaker.force_open()  # nothing runs: what was taken stays pending
    assert snsd.post(signed_notification("a", "b", "c"))[1] == {"status": "spooled", "jobs": 3}
    status, _, headers = snsd.post(signed_notification("d"))  # at the cap now: the next one waits
    assert status == 503 and headers.getRawHeaders("Retry-After") == ["20"]
    assert snsd.counts()["records"] == 3


@pytest.mark.parametrize("memory_let_go", [False, True], ids=["memory", "spool"])
def test_a_replay_inside_the_clock_skew_allowance_is_a_duplicate(tmp_path, memory_let_go):
    # Issue 15 item 2, scaled down: max-age 10 s, a message stamped 5 s ahead of snsd's clock is
    # still fresh 12 s after it was accepted; it used to be remembered only 10 s, and ran twice.
    snsd = Snsd(tmp_path, max_age=10, dedup_ttl=10)
    fields = signed(notification(s3_message("a.csv"), timestamp=NOW + timedelta(seconds=5)))
    assert snsd.post(fields)[1] == {"status": "accepted", "jobs": 1}
    snsd.clock.advance(12)
    if memory_let_go:
        snsd.accepted.release(fields["MessageId"])  # as if the bounded memory had let go: the spool remembers
    assert snsd.post(fields)[1] == {"status": "duplicate"}
    assert len(snsd.jobs_seen) == 1
