"""Shared fixtures: a real LocalStack for the end-to-end tests (started once per session, on demand)
and a Docker engine with the snsd image for the container tests."""

import os

import pytest

from tests.container_env import FIGURES, docker_ready, skip_without_engine, snsd_image  # noqa: F401 - fixtures
from tests.localstack_fixtures import aws_env, localstack_url  # noqa: F401 - pytest fixtures

# `make test` (and so CI) sets SNSD_REQUIRE_E2E=1: a run in which no LocalStack test passed
# (all deselected, skipped, or none collected) is then a failure, not a quiet green.
# SNSD_REQUIRE_CONTAINER=1 does the same for the container tests (a machine without a Docker
# engine skips them otherwise).
_e2e_passed = 0
_container_passed = 0


def pytest_runtest_logreport(report):
    global _e2e_passed, _container_passed
    if report.when == "call" and report.passed and "localstack" in report.keywords:
        _e2e_passed += 1
    if report.when == "call" and report.passed and "container" in report.keywords:
        _container_passed += 1


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("SNSD_REQUIRE_E2E") == "1" and exitstatus == pytest.ExitCode.OK and not _e2e_passed:
        print("\nSNSD_REQUIRE_E2E=1 but no LocalStack end-to-end test passed", flush=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if os.environ.get("SNSD_REQUIRE_CONTAINER") == "1" and exitstatus == pytest.ExitCode.OK and not _container_passed:
        print("\nSNSD_REQUIRE_CONTAINER=1 but no container test passed", flush=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_finish(session):
    skip_without_engine(session.items)


def pytest_terminal_summary(terminalreporter):
    # Build and run figures of the container tests (base image, image size and build time).
    if FIGURES:
        terminalreporter.section("container figures")
        for name, value in FIGURES.items():
            terminalreporter.write_line(f"{name}: {value}")
