"""The operator's routes: closed on the main port by default, served by the admin listener (issue 15 item 1)."""

from __future__ import annotations

import base64

import pytest

from tests.trust_helpers import notification, signed
from tests.web_harness import Snsd, s3_message

ADMIN = [("GET", "/breaker"), ("POST", "/breaker/reset"), ("GET", "/breaker/reset"), ("POST", "/breaker/open"),
         ("GET", "/metrics")]  # fmt: skip


@pytest.mark.parametrize("method,path", ADMIN)
def test_admin_routes_are_404_on_the_main_port_by_default(tmp_path, method, path):
    snsd = Snsd(tmp_path)
    status, body, _ = snsd.request(method, path)
    assert (status, body) == (404, {"error": "not found"})


def test_an_anonymous_breaker_open_on_the_main_port_changes_nothing(tmp_path):
    # The attack of issue 15 item 1: one POST stopped all work.
    snsd = Snsd(tmp_path)
    snsd.request("POST", "/breaker/open")
    assert snsd.breaker.snapshot()["state"] == "closed"
    assert snsd.post(signed(notification(s3_message("a.csv"))))[1] == {"status": "accepted", "jobs": 1}


@pytest.mark.parametrize("method,path", ADMIN)
def test_admin_routes_work_on_the_admin_listener(tmp_path, method, path):
    assert Snsd(tmp_path).admin(method, path)[0] == 200


def test_the_admin_listener_changes_the_breaker(tmp_path):
    snsd = Snsd(tmp_path)
    assert snsd.admin("POST", "/breaker/open")[1]["state"] == "open"
    assert snsd.breaker.is_open
    assert snsd.admin("POST", "/breaker/reset")[1]["state"] == "closed"


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
@pytest.mark.parametrize("admin", [False, True], ids=["main port", "admin listener"])
def test_health_routes_are_open_on_both_ports(tmp_path, path, admin):
    assert Snsd(tmp_path, basic_auth="sns:s3cret").request("GET", path, admin=admin)[0] == 200


def test_the_admin_listener_does_not_take_sns_posts(tmp_path):
    snsd = Snsd(tmp_path)
    status, _, _ = snsd.request("POST", "/", signed(notification(s3_message("a.csv"))), admin=True)
    assert status == 404
    assert snsd.jobs_seen == []


@pytest.mark.parametrize("method,path", ADMIN)
def test_admin_on_main_port_restores_them_there_for_development(tmp_path, method, path):
    snsd = Snsd(tmp_path, admin_on_main_port=True)
    assert snsd.daemon.admin_http is None
    assert snsd.request(method, path)[0] == 200


def test_basic_auth_guards_the_admin_routes_on_the_admin_listener(tmp_path):
    snsd = Snsd(tmp_path, basic_auth="sns:s3cret")
    assert snsd.admin("POST", "/breaker/open")[0] == 401
    right = {"Authorization": "Basic " + base64.b64encode(b"sns:s3cret").decode()}
    assert snsd.admin("GET", "/metrics", headers=right)[0] == 200
