"""The ``sqstaskmaster`` command: submit, stats, purge, worker start-up errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, List, Tuple

import pytest

from sqstaskmaster import cli


class Cli:
    """Runs ``cli.main`` in this process; ``err`` holds stderr and the log lines."""

    def __init__(self, sqs_server: Any, capsys: Any, caplog: Any) -> None:
        self.sqs_server = sqs_server
        self.capsys = capsys
        self.caplog = caplog

    def __call__(self, *args: str) -> Tuple[int, str, str]:
        self.caplog.clear()
        code = cli.main(
            ["--log-level", "WARNING", *args, "--endpoint-url", self.sqs_server.endpoint_url]
        )
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err + self.caplog.text


@pytest.fixture
def run_cli(sqs_server: Any, capsys: Any, caplog: Any) -> Cli:
    return Cli(sqs_server, capsys, caplog)


@pytest.fixture(autouse=True)
def _dummy_credentials(sqs_environment: Any) -> None:
    """Region and credentials from the environment, as in production."""


def test_submit_sends_the_0_0_11_body(sqs_server: Any, sqs_queue: Any, run_cli: Cli) -> None:
    code, out, _ = run_cli("submit", sqs_queue.url, "resize", "--kwargs", '{"w": 2}')
    assert code == cli.RET_OK
    messages = sqs_queue.queue.receive_messages(MessageAttributeNames=["All"], WaitTimeSeconds=1)
    assert messages[0].body == '{"task": "resize", "kwargs": {"w": 2}}'
    assert out.strip() == messages[0].message_id


@pytest.mark.parametrize("kwargs", ["[1, 2]", "not json"])
def test_submit_refuses_kwargs_that_are_not_an_object(
    sqs_server: Any, sqs_queue: Any, run_cli: Cli, kwargs: str
) -> None:
    code, _, err = run_cli("submit", sqs_queue.url, "t", "--kwargs", kwargs)
    assert code == cli.RET_USAGE
    assert repr(kwargs) in err
    assert sqs_queue.queue.receive_messages(WaitTimeSeconds=0) == []


@pytest.mark.parametrize(
    ("task", "kwargs", "named"),
    [
        ("", "{}", "Task name ''"),
        ("t", '{"x": [1, NaN]}', "kwargs['x'][1] is nan"),
        ("t", '{"x": Infinity}', "kwargs['x'] is inf"),
        ("t", '{"a": ' + "[" * 600 + "]" * 600 + "}", "levels deep"),
    ],
    ids=["empty-task", "nan", "infinity", "too-deep"],
)
def test_submit_refuses_what_no_worker_can_run(
    sqs_server: Any, sqs_queue: Any, run_cli: Cli, task: str, kwargs: str, named: str
) -> None:
    code, _, err = run_cli("submit", sqs_queue.url, task, "--kwargs", kwargs)
    assert code == cli.RET_USAGE
    assert named in err and "not sent" in err
    assert sqs_queue.queue.receive_messages(WaitTimeSeconds=0) == []


def test_submit_refuses_kwargs_json_cannot_decode(
    sqs_server: Any, sqs_queue: Any, run_cli: Cli
) -> None:
    code, _, err = run_cli("submit", sqs_queue.url, "t", "--kwargs", "[" * 3000)
    assert code == cli.RET_USAGE
    assert "--kwargs is not JSON" in err


def test_submit_checks_the_size_before_sending(sqs_server: Any, run_cli: Cli) -> None:
    queue = sqs_server.make_queue(attributes={"MaximumMessageSize": "1024"})
    code, _, err = run_cli("submit", queue.url, "t", "--kwargs", json.dumps({"x": "y" * 2000}))
    assert code == cli.RET_USAGE
    assert "MaximumMessageSize of 1024 bytes" in err
    assert queue.queue.receive_messages(WaitTimeSeconds=0) == []


def test_stats_counts_visible_in_flight_and_dead_letter(sqs_server: Any, run_cli: Cli) -> None:
    queue = sqs_server.make_queue(dead_letter=True, max_receive_count=5)
    tm = sqs_server.task_manager(queue)
    for number in range(3):
        tm.submit("t", n=number)
    queue.queue.receive_messages(MaxNumberOfMessages=1, VisibilityTimeout=60)
    queue.dead_letter_queue.send_message(MessageBody="dead")
    code, out, _ = run_cli("stats", queue.url, "--json")
    assert code == cli.RET_OK
    stats = json.loads(out)
    assert (stats["visible"], stats["in_flight"], stats["delayed"]) == (2, 1, 0)
    assert (stats["dead_letter"], stats["max_receive_count"]) == (1, 5)
    assert stats["dead_letter_url"] == queue.dead_letter_url
    code, out, _ = run_cli("stats", queue.url)
    assert "in flight    1" in out and "dead-letter  1" in out


def test_stats_without_redrive_policy(sqs_server: Any, sqs_queue: Any, run_cli: Cli) -> None:
    code, out, _ = run_cli("stats", sqs_queue.url)
    assert code == cli.RET_OK
    assert "no redrive policy" in out


def test_purge_asks_unless_yes(
    sqs_server: Any, sqs_queue: Any, run_cli: Cli, monkeypatch: Any
) -> None:
    sqs_server.task_manager(sqs_queue).submit("t")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    code, _, err = run_cli("purge", sqs_queue.url)
    assert code == cli.RET_USAGE and "--yes" in err
    assert len(sqs_queue.queue.receive_messages(WaitTimeSeconds=1, VisibilityTimeout=0)) == 1
    code, out, _ = run_cli("purge", sqs_queue.url, "--yes")
    assert code == cli.RET_OK and "Purged" in out
    assert sqs_queue.queue.receive_messages(WaitTimeSeconds=0) == []


def test_purge_answer_no_keeps_messages(
    sqs_server: Any, sqs_queue: Any, run_cli: Cli, monkeypatch: Any
) -> None:
    sqs_server.task_manager(sqs_queue).submit("t")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    code, out, _ = run_cli("purge", sqs_queue.url)
    assert code == cli.RET_OK and "Not purged" in out
    assert len(sqs_queue.queue.receive_messages(WaitTimeSeconds=1)) == 1


@pytest.mark.parametrize(
    "app, text",
    [
        ("no_such_module_xyz:app", "import of 'no_such_module_xyz' failed"),
        ("json:no_such_attribute", "no attribute 'no_such_attribute'"),
        ("json", "module:attribute"),
        ("json:dumps", "it is a function"),
    ],
)
def test_worker_app_that_cannot_load_exits_ret_import(
    sqs_server: Any, sqs_queue: Any, run_cli: Cli, app: str, text: str
) -> None:
    code, _, err = run_cli("worker", app, "--queue-url", sqs_queue.url)
    assert code == cli.RET_IMPORT
    assert text in err


def test_worker_on_a_missing_queue_exits_ret_connect(
    sqs_server: Any, sqs_queue: Any, run_cli: Cli
) -> None:
    missing = sqs_queue.url + "-missing"
    code, _, err = run_cli("worker", "worker_apps:app", "--queue-url", missing)
    assert code == cli.RET_CONNECT
    assert missing in err


@pytest.mark.parametrize(
    "options, text",
    [
        (["--sqs-timeout", "3", "--alarm-timeout", "2"], "alarm_timeout 2"),
        (["--processes", "zero"], "'zero'"),
        (["--retry-factor", "0.1"], "0.1"),
    ],
)
def test_worker_bad_settings_exit_ret_usage(
    sqs_server: Any, sqs_queue: Any, run_cli: Cli, options: List[str], text: str
) -> None:
    code, _, err = run_cli("worker", "worker_apps:app", "--queue-url", sqs_queue.url, *options)
    assert code == cli.RET_USAGE
    assert text in err


def test_worker_without_queue_url_exits_ret_usage(sqs_server: Any, run_cli: Cli) -> None:
    code, _, err = run_cli("worker", "worker_apps:app")
    assert code == cli.RET_USAGE and "--queue-url" in err


def test_region_from_url() -> None:
    assert cli.region_from_url("https://sqs.eu-west-3.amazonaws.com/1/q") == "eu-west-3"
    assert cli.region_from_url("https://us-east-2.queue.amazonaws.com/1/q") == "us-east-2"
    assert cli.region_from_url("http://127.0.0.1:5000/1/q") is None


def test_python_dash_m_runs_the_same_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sqstaskmaster", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for command in ("demo", "worker", "submit", "stats", "purge"):
        assert command in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "sqstaskmaster", "submit"], capture_output=True, text=True
    )
    assert result.returncode == cli.RET_USAGE
