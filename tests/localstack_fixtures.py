"""Session fixtures for tests against a real LocalStack.

Import them into ``tests/conftest.py`` (``from tests.localstack_fixtures import aws_env, localstack_url``).
``localstack_url`` uses ``$LOCALSTACK_URL`` when that answers healthy, and otherwise starts LocalStack
on a free loopback port for the session and stops it at the end.  Nothing global is changed: tests
pass ``aws_env`` to the clients and processes they start.

The LocalStack is shared per process, not per fixture definition, so a test module that also
imports these fixtures does not start a second one.
"""

from __future__ import annotations

import atexit
import contextlib
import os

import pytest

from snsd_devtools.localstack import LocalStackError, aws_environment, ensure_localstack, free_port

_running = contextlib.ExitStack()
_url: str | None = None


def _shared_localstack() -> str:
    global _url
    if _url is None:
        _url = _running.enter_context(ensure_localstack(url=os.environ.get("LOCALSTACK_URL") or None, port=free_port()))
        # Stopped when the test process ends, after every fixture that used it is torn down.
        atexit.register(_running.close)
    return _url


@pytest.fixture(scope="session")
def localstack_url() -> str:
    try:
        return _shared_localstack()
    except LocalStackError as exc:
        # A missing Python 3.12+ or a LocalStack that will not start is a failure, not a skip:
        # these tests are the proof that the loop works.
        pytest.fail(f"LocalStack unavailable: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def aws_env(localstack_url) -> dict[str, str]:
    """The variables boto3, the aws CLI and the snsd tools need for this LocalStack (merge into os.environ)."""
    return aws_environment(localstack_url, base={})
