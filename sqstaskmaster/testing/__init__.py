"""Test against a real SQS-compatible server on 127.0.0.1, without an AWS account.

``pip install "sqstaskmaster[testing]"`` brings moto's server mode. Then::

    from sqstaskmaster.testing import sqs_server

    with sqs_server() as server:
        queue = server.make_queue(dead_letter=True, max_receive_count=2)
        tm = TaskManager(queue.url, session=server.session)
        ...

The server runs in its own process (so a task that holds the GIL in the test
process cannot stall it), on a free port, with dummy credentials. Visibility
timeouts, redelivery, receive counts and dead-letter queues behave as SQS's
do. With pytest, the fixtures ``sqs_server`` (one server per test session) and
``sqs_queue`` (a fresh queue per test) come from the plugin in
:mod:`sqstaskmaster.testing.pytest_plugin`. :class:`FakeMetadataService`
(:mod:`sqstaskmaster.testing.metadata`) stands in for the EC2 metadata
service, to test Spot interruption notices.

The server also holds task status tables (DynamoDB):
``server.make_status_table()``, or the ``status_table`` fixture.

This subpackage imports only :mod:`sqstaskmaster.errors`, :mod:`sqstaskmaster.sqs`,
:mod:`sqstaskmaster.ops` (the status table) and the 0.0.11 ``task_manager``
and ``local``: nothing of the worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Optional

from .metadata import FakeMetadataService as FakeMetadataService

DUMMY_ACCESS_KEY = "testing"
DUMMY_SECRET_KEY = "testing"
DEFAULT_REGION = "us-east-1"
STARTUP_TIMEOUT_S = 30.0
# Set to an SQS-compatible endpoint (LocalStack, ElasticMQ, ...) already
# running on this machine, and :func:`sqs_server` uses it instead of starting moto.
ENDPOINT_VARIABLE = "SQSTASKMASTER_TEST_ENDPOINT"
# Set to a DynamoDB-compatible endpoint, and the status tables of the tests
# live there instead of on the SQS server (for a server without DynamoDB).
DYNAMODB_ENDPOINT_VARIABLE = "SQSTASKMASTER_TEST_DYNAMODB_ENDPOINT"


class ServerStartError(RuntimeError):
    """The SQS-compatible test server did not come up."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class TestQueue:
    """A queue made on the test server: its URL, its resource, and its dead-letter queue."""

    __test__ = False  # not a pytest test class

    url: str
    name: str
    queue: Any
    dead_letter_url: Optional[str] = None
    dead_letter_queue: Any = None
    attributes: Dict[str, str] = field(default_factory=dict)


class SQSServer:
    """A running server: its endpoint, a boto3 session for it, and queue and status table
    factories.

    ``dynamodb_endpoint_url`` is where its status tables live: the server's own
    endpoint, unless the environment variable
    ``SQSTASKMASTER_TEST_DYNAMODB_ENDPOINT`` names another (a moto server beside
    a LocalStack without DynamoDB, say).
    """

    def __init__(self, endpoint_url: str, region: str = DEFAULT_REGION) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        dynamodb = os.environ.get(DYNAMODB_ENDPOINT_VARIABLE)
        self.dynamodb_endpoint_url = dynamodb.rstrip("/") if dynamodb else endpoint_url
        import boto3

        self.session = boto3.session.Session(
            aws_access_key_id=DUMMY_ACCESS_KEY,
            aws_secret_access_key=DUMMY_SECRET_KEY,
            region_name=region,
        )
        self.sqs = self.session.resource("sqs", endpoint_url=endpoint_url)
        self.client = self.sqs.meta.client
        self._has_ecs: Optional[bool] = None
        self._has_dynamodb: Optional[bool] = None

    @property
    def has_ecs(self) -> bool:
        """Whether the server also emulates ECS (moto does; LocalStack's free edition does not)."""
        if self._has_ecs is None:
            from botocore.exceptions import BotoCoreError, ClientError

            ecs = self.session.client("ecs", endpoint_url=self.endpoint_url)
            try:
                ecs.list_clusters()
                self._has_ecs = True
            except (ClientError, BotoCoreError):
                self._has_ecs = False
        return self._has_ecs

    @property
    def has_dynamodb(self) -> bool:
        """Whether :attr:`dynamodb_endpoint_url` answers DynamoDB (moto does; a LocalStack
        started for SQS alone does not)."""
        if self._has_dynamodb is None:
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError, ClientError

            dynamodb = self.session.client(
                "dynamodb",
                endpoint_url=self.dynamodb_endpoint_url,
                config=Config(connect_timeout=2, read_timeout=5, retries={"total_max_attempts": 2}),
            )
            try:
                dynamodb.list_tables(Limit=1)
                self._has_dynamodb = True
            except (ClientError, BotoCoreError):
                self._has_dynamodb = False
        return self._has_dynamodb

    @property
    def environment(self) -> Dict[str, str]:
        """Environment variables that point boto3's default configuration at this server.

        The EC2 metadata service is off (``AWS_EC2_METADATA_DISABLED``): a worker
        started with them does not probe 169.254.169.254 for Spot interruption
        notices. Add a :class:`FakeMetadataService`'s ``environment()`` to test them.
        DynamoDB's endpoint (``AWS_ENDPOINT_URL_DYNAMODB``) is
        :attr:`dynamodb_endpoint_url`, where the status tables are.
        """
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_DYNAMODB": self.dynamodb_endpoint_url,
            "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_KEY,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def make_queue(
        self,
        name: Optional[str] = None,
        *,
        dead_letter: bool = False,
        max_receive_count: int = 3,
        fifo: bool = False,
        attributes: Optional[Dict[str, str]] = None,
    ) -> TestQueue:
        """Create a queue (a unique name by default), optionally with a dead-letter queue.

        ``max_receive_count`` is the redrive policy's ``maxReceiveCount``:
        after that many receives a message moves to the dead-letter queue.
        """
        base = name or f"test-{uuid.uuid4().hex[:12]}"
        suffix = ".fifo" if fifo else ""
        queue_attributes: Dict[str, str] = {}
        if fifo:
            queue_attributes["FifoQueue"] = "true"
        dead_letter_url = None
        dead_letter_queue = None
        if dead_letter:
            dead_letter_queue = self.sqs.create_queue(
                QueueName=f"{base}-dlq{suffix}", Attributes=dict(queue_attributes)
            )
            dead_letter_url = dead_letter_queue.url
            arn = dead_letter_queue.attributes["QueueArn"]
            queue_attributes["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": arn, "maxReceiveCount": str(max_receive_count)}
            )
        queue_attributes.update(attributes or {})
        queue = self.sqs.create_queue(QueueName=base + suffix, Attributes=queue_attributes)
        return TestQueue(
            url=queue.url,
            name=base + suffix,
            queue=queue,
            dead_letter_url=dead_letter_url,
            dead_letter_queue=dead_letter_queue,
            attributes=queue_attributes,
        )

    def make_status_table(self, name: Optional[str] = None) -> Any:
        """Create a task status table (a unique name by default) at
        :attr:`dynamodb_endpoint_url`, TTL on; returns its
        :class:`~sqstaskmaster.ops.status_table.StatusTable`."""
        from ..ops.status_table import StatusTable

        table = StatusTable(
            name or f"status-{uuid.uuid4().hex[:12]}",
            session=self.session,
            endpoint_url=self.dynamodb_endpoint_url,
        )
        table.create()
        return table

    def task_manager(self, queue: Any, **kwargs: Any) -> Any:
        """A TaskManager for ``queue`` (a TestQueue or a URL) talking to this server."""
        from ..task_manager import TaskManager

        url = queue.url if isinstance(queue, TestQueue) else queue
        return TaskManager(url, sqs=self.sqs, **kwargs)


# Run in the server's own process: moto's app on a port the OS picks, so no
# other server can be on it; the port goes to stdout once it is bound.
_LAUNCHER = """
import logging, sys, threading
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address=sys.argv[1], port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
threading.Event().wait()
"""


def _bound_port(process: subprocess.Popen[bytes], timeout_s: float) -> int:
    """The port the server process reports once it has bound it."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout_s)
    line = process.stdout.readline() if ready else b""
    if not line.strip().isdigit():
        code = process.poll()
        raise ServerStartError(
            f"moto server did not report its port within {timeout_s} s"
            + (f" (it exited with code {code})" if code is not None else "")
        )
    return int(line)


def _wait_until_up(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerStartError(
                f"moto server exited with code {process.returncode} before answering on {url}"
            )
        try:
            with urllib.request.urlopen(url + "/moto-api/", timeout=1):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    raise ServerStartError(f"moto server did not answer on {url} within {timeout_s} s")


@contextlib.contextmanager
def sqs_server(
    *,
    region: str = DEFAULT_REGION,
    set_environment: bool = False,
    host: str = "127.0.0.1",
    endpoint_url: Optional[str] = None,
) -> Iterator[SQSServer]:
    """Start moto's server mode on ``host``; yield an :class:`SQSServer`.

    The server binds a port the OS picks and reports it, so the kit never
    talks to a server it did not start. With ``set_environment=True``,
    ``os.environ`` points boto3 at the server (endpoint, dummy credentials,
    region) until the block ends, for code that builds its own clients.

    ``endpoint_url`` (or else the environment variable
    ``SQSTASKMASTER_TEST_ENDPOINT``) names an SQS-compatible server that is
    already running, say a LocalStack on ``http://127.0.0.1:4566``: it is used
    as it is and nothing is started, so one suite runs against either.
    """
    external = endpoint_url or os.environ.get(ENDPOINT_VARIABLE)
    if external:
        with _environment_for(SQSServer(external.rstrip("/"), region), set_environment) as server:
            yield server
        return
    try:
        import moto.server  # noqa: F401
    except ImportError as error:
        raise ServerStartError(
            "sqstaskmaster.testing needs moto's server mode: pip install 'sqstaskmaster[testing]'"
        ) from error
    process = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, host],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://{host}:{_bound_port(process, STARTUP_TIMEOUT_S)}"
        assert process.stdout is not None
        process.stdout.close()
        _wait_until_up(url, process, STARTUP_TIMEOUT_S)
        with _environment_for(SQSServer(url, region), set_environment) as server:
            yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def _environment_for(server: SQSServer, set_environment: bool) -> Iterator[SQSServer]:
    """Yield ``server``; with ``set_environment``, point ``os.environ`` at it meanwhile."""
    saved: Dict[str, Optional[str]] = {}
    try:
        if set_environment:
            for key, value in server.environment.items():
                saved[key] = os.environ.get(key)
                os.environ[key] = value
        yield server
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
