"""The test kit's own contract: an external endpoint, the ECS probe."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
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


class _Stranger(http.server.BaseHTTPRequestHandler):
    """Someone else's server: answers every request with 200."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_server_on_the_chosen_port_is_never_adopted(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a stranger's server on the very port a free-port probe would return,
    stranger = http.server.HTTPServer(("127.0.0.1", 0), _Stranger)
    threading.Thread(target=stranger.serve_forever, daemon=True).start()
    port = stranger.server_address[1]
    monkeypatch.setattr(testing, "free_port", lambda host="127.0.0.1": port)
    monkeypatch.delenv(ENDPOINT_VARIABLE, raising=False)
    try:
        # when the kit starts a server, it talks to its own, not the stranger.
        with sqs_server() as server:
            assert not server.endpoint_url.endswith(f":{port}")
            assert server.make_queue().url.startswith(server.endpoint_url)
    finally:
        stranger.shutdown()
        stranger.server_close()


def test_the_sqs_endpoint_option_reaches_the_fixture(sqs_server: Any, tmp_path: Any) -> None:
    # A run of pytest with --sqs-endpoint uses that server for the fixtures.
    (tmp_path / "test_inner.py").write_text(
        "def test_inner(sqs_server):\n"
        f"    assert sqs_server.endpoint_url == {sqs_server.endpoint_url!r}\n"
    )
    environment = {k: v for k, v in os.environ.items() if k != ENDPOINT_VARIABLE}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path),
         "--sqs-endpoint", sqs_server.endpoint_url],
        capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
