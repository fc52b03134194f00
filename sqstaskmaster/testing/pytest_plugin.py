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
- ``metadata_service``: a :class:`sqstaskmaster.testing.FakeMetadataService`
  for one test (EC2 Spot interruption notices); pass its ``environment()`` on.
- ``status_table``: a fresh task status table (DynamoDB, TTL on) for each
  test, on the session's server or at ``$SQSTASKMASTER_TEST_DYNAMODB_ENDPOINT``
  (a :class:`sqstaskmaster.ops.status_table.StatusTable`); workers started
  with ``sqs_server.environment`` write to the same DynamoDB. The test is
  skipped where there is no DynamoDB.

To run the same tests against an SQS-compatible server that is already
running (LocalStack, ElasticMQ, an AWS account), pass ``--sqs-endpoint URL``
to pytest or set ``SQSTASKMASTER_TEST_ENDPOINT`` (see :mod:`sqstaskmaster.testing`).
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import pytest

from . import FakeMetadataService, SQSServer, TestQueue
from . import sqs_server as _start_server

logger = logging.getLogger(__name__)


def pytest_addoption(parser: Any) -> None:
    parser.addoption(
        "--sqs-endpoint",
        default=None,
        metavar="URL",
        help="run the sqs_server fixtures against this SQS-compatible server instead of "
        "starting moto (default: $SQSTASKMASTER_TEST_ENDPOINT, else moto)",
    )


@pytest.fixture(scope="session")
def sqs_server(request: Any) -> Iterator[SQSServer]:
    """A moto server on 127.0.0.1 (or the server ``--sqs-endpoint`` names) for the session."""
    with _start_server(endpoint_url=request.config.getoption("--sqs-endpoint")) as server:
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


@pytest.fixture
def status_table(sqs_server: SQSServer) -> Iterator[Any]:
    """A new task status table with a unique name (a StatusTable); deleted after the test.

    Skips the test where the server has no DynamoDB (and no
    ``SQSTASKMASTER_TEST_DYNAMODB_ENDPOINT`` names one).
    """
    if not sqs_server.has_dynamodb:
        pytest.skip(
            f"no DynamoDB at {sqs_server.dynamodb_endpoint_url}: set "
            "SQSTASKMASTER_TEST_DYNAMODB_ENDPOINT to a DynamoDB-compatible server (a moto server)"
        )
    table = sqs_server.make_status_table()
    yield table
    try:
        table.client.delete_table(TableName=table.name)
    except Exception as error:  # the test may have deleted it; nothing else depends on it
        logger.warning("status table %s not deleted after the test: %s", table.name, error)


@pytest.fixture
def metadata_service() -> Iterator[FakeMetadataService]:
    """A fake EC2 instance metadata service on 127.0.0.1, no notice yet; stopped after the test."""
    with FakeMetadataService() as service:
        yield service
