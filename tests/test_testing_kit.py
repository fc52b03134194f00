"""The test kit's own contract: an external endpoint, the ECS probe."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest

from sqstaskmaster import testing
from sqstaskmaster.testing import ENDPOINT_VARIABLE, sqs_server


def test_an_external_endpoint_is_used_as_it_is(
    sqs_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an endpoint in the environment (here the session's own server),
    started = []
    monkeypatch.setattr(
        testing.subprocess, "Popen", lambda *a, **k: started.append(a) or subprocess.Popen(*a, **k)
    )
    monkeypatch.setenv(ENDPOINT_VARIABLE, sqs_server.endpoint_url + "/")
    before = os.environ.get("AWS_ENDPOINT_URL")
    # when a server is asked for, nothing is started and queues land there.
    with testing.sqs_server(set_environment=True) as server:
        assert server.endpoint_url == sqs_server.endpoint_url
        assert os.environ["AWS_ENDPOINT_URL"] == sqs_server.endpoint_url
        queue = server.make_queue()
        urls = sqs_server.client.list_queues(QueueNamePrefix=queue.name)["QueueUrls"]
        assert queue.url in urls
    assert started == []
    assert os.environ.get("AWS_ENDPOINT_URL") == before  # put back


def test_without_the_variable_moto_is_started(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENDPOINT_VARIABLE, raising=False)
    with sqs_server() as server:
        assert server.has_ecs  # moto emulates ECS
        assert server.make_queue().url.startswith(server.endpoint_url)


def test_has_ecs_is_false_where_ecs_is_not_served() -> None:
    # Nothing listens on this port: the probe fails and says so instead of raising.
    server = testing.SQSServer(f"http://127.0.0.1:{testing.free_port()}")
    server.session._session.set_config_variable("max_attempts", 1)
    assert server.has_ecs is False


def test_ecs_client_fixture(sqs_server: Any, ecs_client: Any) -> None:
    # Skipped (by the fixture) on a server without ECS; a real client otherwise.
    assert sqs_server.has_ecs
    assert "clusterArns" in ecs_client.list_clusters()
