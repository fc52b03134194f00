"""pytest fixtures for testing against a real SQS-compatible server.

Registered through the ``pytest11`` entry point, so installing
``sqstaskmaster[testing]`` makes them available in every test suite:

- ``sqs_server``: one moto server on 127.0.0.1 for the test session
  (an :class:`sqstaskmaster.testing.SQSServer`).
- ``sqs_queue``: a fresh queue on that server for each test
  (an :class:`sqstaskmaster.testing.TestQueue`).
- ``sqs_environment``: sets boto3's environment variables (endpoint, dummy
  credentials, region) for one test, for code that builds its own clients.
- ``ecs_client``: a boto3 ECS client on the same server; the test is skipped
  when the server has no ECS (LocalStack's free edition).

Set ``SQSTASKMASTER_TEST_ENDPOINT`` to run the same tests against an
SQS-compatible server that is already running (see :mod:`sqstaskmaster.testing`).
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from .testing import SQSServer, TestQueue
from .testing import sqs_server as _start_server


@pytest.fixture(scope="session")
def sqs_server() -> Iterator[SQSServer]:
    """A moto server on 127.0.0.1 (or the one the environment names) for the whole session."""
    with _start_server() as server:
        yield server


@pytest.fixture
def sqs_queue(sqs_server: SQSServer) -> TestQueue:
    """A new, empty queue with a unique name."""
    return sqs_server.make_queue()


@pytest.fixture
def sqs_environment(sqs_server: SQSServer, monkeypatch: Any) -> SQSServer:
    """Point boto3's default configuration at the test server for one test."""
    for key, value in sqs_server.environment.items():
        monkeypatch.setenv(key, value)
    return sqs_server


@pytest.fixture
def ecs_client(sqs_server: SQSServer) -> Any:
    """An ECS client on the test server; skips the test where the server has no ECS."""
    if not sqs_server.has_ecs:
        pytest.skip(f"the test server at {sqs_server.endpoint_url} does not emulate ECS")
    return sqs_server.session.client("ecs", endpoint_url=sqs_server.endpoint_url)
