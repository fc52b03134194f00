"""pytest fixtures for testing against a real SQS-compatible server.

Registered through the ``pytest11`` entry point, so installing
``sqstaskmaster[testing]`` makes them available in every test suite:

- ``sqs_server``: one moto server on 127.0.0.1 for the test session
  (an :class:`sqstaskmaster.testing.SQSServer`).
- ``sqs_queue``: a fresh queue on that server for each test
  (an :class:`sqstaskmaster.testing.TestQueue`).
- ``sqs_environment``: sets boto3's environment variables (endpoint, dummy
  credentials, region) for one test, for code that builds its own clients.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from .testing import SQSServer, TestQueue
from .testing import sqs_server as _start_server


@pytest.fixture(scope="session")
def sqs_server() -> Iterator[SQSServer]:
    """A moto server on 127.0.0.1 shared by the whole test session."""
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
