"""Every metric moves where it belongs, seen through ``GET /metrics`` of the real endpoint.

The in-memory harness runs the real endpoint, trust checks, inline spool and dispatcher on a
fake clock.  Metrics live in the process-wide default registry, so each test compares the
values before and after what it does, never absolute numbers.
"""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tests.trust_helpers import notification as sns_notification
from tests.trust_helpers import signed
from tests.web_harness import Snsd, s3_message


def signed_notification(*keys, **kwargs):
    return signed(sns_notification(s3_message(*keys), **kwargs))


def scrape(snsd: Snsd) -> dict[tuple, float]:
    """``/metrics`` as {(sample name, sorted labels): value}, parsed as Prometheus would."""
    status, body, headers = snsd.admin("GET", "/metrics")
    assert status == 200
    assert headers.getRawHeaders("Content-Type")[0].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: dict, after: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def failing_job(record):
    raise FileNotFoundError(f"no such object {record.key}")


def test_a_burst_shows_requests_latency_jobs_and_durations(tmp_path):
    snsd = Snsd(tmp_path)
    before = scrape(snsd)
    for i in range(25):
        assert snsd.post(signed_notification(f"burst-{i}.csv"))[0] == 200
    after = scrape(snsd)
    assert delta(before, after, "snsd_requests_total", type="Notification", status="200") == 25
    assert delta(before, after, "snsd_request_seconds_count") == 25
    assert delta(before, after, "snsd_jobs_total", outcome="ok", verdict="passed") == 25
    assert delta(before, after, "snsd_job_seconds_count") == 25
    assert value(after, "snsd_jobs_running") == 0
    assert value(after, "snsd_spool_pending") == 0


def test_jobs_running_counts_the_job_while_it_runs(tmp_path):
    seen = []

    def job(record):
        seen.append(REGISTRY.get_sample_value("snsd_jobs_running"))
        return {"verdict": "passed"}

    snsd = Snsd(tmp_path, job)
    idle = REGISTRY.get_sample_value("snsd_jobs_running")
    snsd.post(signed_notification("a.csv"))
    assert seen == [idle + 1]
    assert REGISTRY.get_sample_value("snsd_jobs_running") == idle


def test_refusals_are_counted_by_type_and_status(tmp_path):
    snsd = Snsd(tmp_path)
    before = scrape(snsd)
    assert snsd.post(b"not json")[0] == 400
    snsd.request("GET", "/")  # 405: not counted as an SNS POST
    after = scrape(snsd)
    assert delta(before, after, "snsd_requests_total", type="unknown", status="400") == 1


def test_a_breaker_opening_shows_state_transition_dead_letters_and_failed_jobs(tmp_path):
    snsd = Snsd(tmp_path, failing_job, breaker_mode="skip", max_failures=2)
    before = scrape(snsd)
    assert value(before, "snsd_breaker_state", state="closed") == 1
    for i in range(2):
        snsd.post(signed_notification(f"missing-{i}.csv"))
    snsd.post(signed_notification("skipped.csv"))
    after = scrape(snsd)
    assert value(after, "snsd_breaker_state", state="open") == 1
    assert value(after, "snsd_breaker_state", state="closed") == 0
    assert delta(before, after, "snsd_breaker_transitions_total", from_state="closed", to_state="open") == 1
    assert delta(before, after, "snsd_jobs_total", outcome="error", verdict="none") == 2
    assert delta(before, after, "snsd_dead_letters_total", reason="job_error") == 2
    assert delta(before, after, "snsd_dead_letters_total", reason="breaker_open") == 1


def test_a_spooled_backlog_shows_pending_and_not_permitted_then_drains(tmp_path):
    snsd = Snsd(tmp_path, breaker_mode="spool")
    before = scrape(snsd)
    snsd.breaker.force_open()
    for i in range(3):
        assert snsd.post(signed_notification(f"later-{i}.csv"))[1]["status"] == "spooled"
    held = scrape(snsd)
    assert value(held, "snsd_spool_pending") == 3
    assert delta(before, held, "snsd_breaker_calls_not_permitted_total") >= 3
    assert value(held, "snsd_breaker_state", state="forced_open") == 1

    snsd.breaker.reset()
    drained = scrape(snsd)
    assert value(drained, "snsd_spool_pending") == 0
    assert delta(held, drained, "snsd_jobs_total", outcome="ok", verdict="passed") == 3
    assert delta(held, drained, "snsd_breaker_transitions_total", from_state="forced_open", to_state="closed") == 1


def test_duplicates_are_counted(tmp_path):
    snsd = Snsd(tmp_path)
    fields = signed_notification("once.csv")
    before = scrape(snsd)
    snsd.post(fields)
    snsd.post(fields)
    after = scrape(snsd)
    assert delta(before, after, "snsd_duplicates_total") == 1
    assert delta(before, after, "snsd_jobs_total", outcome="ok", verdict="passed") == 1


def test_signature_failures_are_counted_by_reason(tmp_path):
    snsd = Snsd(tmp_path)
    forged = signed_notification("a.csv")
    forged["Message"] = s3_message("evil.csv")
    before = scrape(snsd)
    assert snsd.post(forged)[0] == 403
    assert snsd.post(sns_notification(s3_message("b.csv")))[0] == 403  # no signature at all
    after = scrape(snsd)
    assert delta(before, after, "snsd_signature_failures_total", reason="bad_signature") == 1
    reasons = {
        dict(labels)["reason"]
        for (name, labels), v in after.items()
        if name == "snsd_signature_failures_total" and v > value(before, name, **dict(labels))
    }
    assert len(reasons) == 2
    assert delta(before, after, "snsd_requests_total", type="Notification", status="403") == 2


def test_certificate_cache_miss_then_hits(tmp_path):
    snsd = Snsd(tmp_path)
    before = scrape(snsd)
    for i in range(4):
        snsd.post(signed_notification(f"k{i}.csv"))
    after = scrape(snsd)
    assert delta(before, after, "snsd_cert_cache_total", result="miss") == 1
    assert delta(before, after, "snsd_cert_cache_total", result="hit") == 3


def test_every_declared_metric_is_exposed(tmp_path):
    snsd = Snsd(tmp_path)
    names = {name for name, _ in scrape(snsd)}
    for expected in (
        "snsd_requests_total",
        "snsd_request_seconds_bucket",
        "snsd_jobs_total",
        "snsd_jobs_running",
        "snsd_job_seconds_bucket",
        "snsd_spool_pending",
        "snsd_dead_letters_total",
        "snsd_breaker_state",
        "snsd_breaker_transitions_total",
        "snsd_breaker_calls_not_permitted_total",
        "snsd_signature_failures_total",
        "snsd_cert_cache_total",
        "snsd_duplicates_total",
    ):
        assert expected in names, expected
