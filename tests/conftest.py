"""Shared fixtures: a real LocalStack for the end-to-end tests (started once per session, on demand)."""

from tests.localstack_fixtures import aws_env, localstack_url  # noqa: F401 - pytest fixtures
