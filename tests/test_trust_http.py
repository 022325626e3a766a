"""Trust refusals seen from outside: through the real endpoint, answered with their status, no job run."""

from __future__ import annotations

from tests.test_trust_signing import resplit
from tests.trust_helpers import notification, signed
from tests.web_harness import Snsd, s3_message


def test_a_message_id_re_split_out_of_the_message_is_refused_with_403_and_runs_no_job(tmp_path):
    snsd = Snsd(tmp_path)
    genuine = signed(notification(message=s3_message("a.csv") + "\nMessageId\nchosen-by-the-sender"), version="2")
    forged = resplit(genuine)
    assert forged["Message"] == s3_message("a.csv")  # a message that would run a job
    status, body, _ = snsd.post(forged)
    assert (status, body) == (403, {"error": "bad_signed_field"})
    assert snsd.jobs_seen == []
