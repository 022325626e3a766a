"""Shared fixtures: a real LocalStack for the end-to-end tests (started once per session, on demand)."""

import os

import pytest

from tests.localstack_fixtures import aws_env, localstack_url  # noqa: F401 - pytest fixtures

# `make test` (and so CI) sets SNSD_REQUIRE_E2E=1: a run in which no LocalStack test passed
# (all deselected, skipped, or none collected) is then a failure, not a quiet green.
_e2e_passed = 0


def pytest_runtest_logreport(report):
    global _e2e_passed
    if report.when == "call" and report.passed and "localstack" in report.keywords:
        _e2e_passed += 1


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("SNSD_REQUIRE_E2E") == "1" and exitstatus == pytest.ExitCode.OK and not _e2e_passed:
        print("\nSNSD_REQUIRE_E2E=1 but no LocalStack end-to-end test passed", flush=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
