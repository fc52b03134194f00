"""A worker's SQS requests are bounded: a dead connection costs at most one heartbeat period."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Iterator, List

import pytest

from sqstaskmaster.sqs.clients import (
    REQUEST_TRIES,
    bind,
    client_config,
    request_timeouts,
    retry_pauses_s,
    worker_clients,
)


@pytest.mark.parametrize("heartbeat_s", [12, 20, 60, 600, 3600])
def test_the_tries_of_one_request_fit_in_a_heartbeat_period(heartbeat_s: int) -> None:
    connect, read = request_timeouts(heartbeat_s)
    assert 1.0 <= connect <= 5.0 and 2.0 <= read <= 20.0
    assert REQUEST_TRIES * (connect + read) + retry_pauses_s(REQUEST_TRIES) <= heartbeat_s


def test_short_heartbeats_keep_workable_lower_bounds() -> None:
    assert request_timeouts(1) == (1.0, 2.0)
    assert retry_pauses_s(1) == 0 and retry_pauses_s(3) == 3.0 and retry_pauses_s(7) == 51.0


def test_the_polling_client_waits_out_the_long_poll() -> None:
    _, read = request_timeouts(10)
    config = client_config(10, poll_wait_s=20)
    assert config.read_timeout == read + 20
    assert config.retries == {"total_max_attempts": REQUEST_TRIES}


def test_boto3s_configured_tries_are_kept_and_fitted(
    sqs_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    session = boto3.session.Session(region_name="us-east-1")
    resource, client = worker_clients(session, sqs_server.endpoint_url, 20, poll_wait_s=5)
    assert client.meta.config.retries["total_max_attempts"] == 2
    connect, read = request_timeouts(20, tries=2)
    assert (client.meta.config.connect_timeout, client.meta.config.read_timeout) == (connect, read)
    assert 2 * (connect + read) + retry_pauses_s(2) <= 20
    assert resource.meta.client.meta.config.read_timeout == read + 5


class Blackhole:
    """A TCP server on 127.0.0.1 that accepts connections and never answers: a dead peer."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.05)  # so that close() ends the accepting thread
        self.port = self.server.getsockname()[1]
        self.accepted: List[socket.socket] = []
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                connection, _ = self.server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted.append(connection)

    def close(self) -> None:
        # Joined: a thread left in this process would be counted by the fork tests.
        self.closing.set()
        self.thread.join(5)
        self.server.close()
        for connection in self.accepted:
            connection.close()


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    yield hole
    hole.close()


def test_a_heartbeat_on_a_dead_connection_fails_within_its_period(
    sqs_server: Any, blackhole: Blackhole
) -> None:
    # Given a worker's clients for a 7 s heartbeat, whose endpoint stops answering
    endpoint = f"http://127.0.0.1:{blackhole.port}"
    resource, client = worker_clients(sqs_server.session, endpoint, 7, poll_wait_s=20)
    message = resource.Message(f"{endpoint}/123456789012/q", "receipt")
    bind([message], client)
    assert message.meta.client is client
    assert client.meta.config.read_timeout < resource.meta.client.meta.config.read_timeout
    # When a heartbeat is made
    started = time.monotonic()
    with pytest.raises(Exception) as raised:
        message.change_visibility(VisibilityTimeout=30)
    # Then it gives up (three tries) within about one period, not after minutes
    # (botocore's defaults: 60 s a read, times its retries)
    elapsed = time.monotonic() - started
    assert "timeout" in type(raised.value).__name__.lower() or "Read" in str(raised.value)
    assert elapsed <= 7 + 3.0, elapsed
    assert len(blackhole.accepted) >= 1


def test_a_workers_messages_are_heartbeated_through_the_bounded_client(
    sqs_server: Any, sqs_queue: Any
) -> None:
    # Given a worker connected as run_single connects it (no resource of the caller's)
    from sqstaskmaster.worker.intake import Intake
    from sqstaskmaster.worker.loop import Worker

    worker = Worker(
        {"noop": lambda: None},
        session=sqs_server.session,
        endpoint_url=sqs_server.endpoint_url,
        sqs_timeout=30,
        poll_wait_s=20,
    )
    tm = worker.connect(sqs_queue.url)
    connect, read = request_timeouts(worker.heartbeat_s)
    # Then its poll waits out the long poll, and nothing else waits longer than a try
    assert tm.queue.meta.client.meta.config.read_timeout == read + 20
    tm.submit("noop")
    intake = Intake(
        tm,
        prefetch=1,
        sqs_timeout=30,
        heartbeat_s=worker.heartbeat_s,
        notify=print,
        client=worker._client,
    )
    assert intake.poll(1) == 1
    item = intake.take()
    assert item is not None
    message = item[0]
    config = message.meta.client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (connect, read)
    message.change_visibility(VisibilityTimeout=0)  # and it works against the server
