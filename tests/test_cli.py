"""The ``sqstaskmaster`` command: submit, stats, purge, worker start-up errors, exit codes."""

from __future__ import annotations

import collections
import json
import logging
import os
import pty
import select
import signal
import subprocess
import sys
import time
from typing import Any, Deque, List, Tuple

import pytest
from botocore.exceptions import ClientError

from sqstaskmaster.cli import commands as cli
from sqstaskmaster.cli.queue_commands import sqs_failure
from sqstaskmaster.sqs.facts import region_from_url
from sqstaskmaster.worker.exitcodes import RET_CONNECT, RET_ERROR, RET_IMPORT, RET_OK, RET_USAGE


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
    assert code == RET_OK
    messages = sqs_queue.queue.receive_messages(MessageAttributeNames=["All"], WaitTimeSeconds=1)
    assert messages[0].body == '{"task": "resize", "kwargs": {"w": 2}}'
    assert out.strip() == messages[0].message_id


@pytest.mark.parametrize("kwargs", ["[1, 2]", "not json"])
def test_submit_refuses_kwargs_that_are_not_an_object(
    sqs_server: Any, sqs_queue: Any, run_cli: Cli, kwargs: str
) -> None:
    code, _, err = run_cli("submit", sqs_queue.url, "t", "--kwargs", kwargs)
    assert code == RET_USAGE
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
    assert code == RET_USAGE
    assert named in err and "not sent" in err
    assert sqs_queue.queue.receive_messages(WaitTimeSeconds=0) == []


def test_submit_refuses_kwargs_json_cannot_decode(
    sqs_server: Any, sqs_queue: Any, run_cli: Cli
) -> None:
    code, _, err = run_cli("submit", sqs_queue.url, "t", "--kwargs", "[" * 3000)
    assert code == RET_USAGE
    assert "--kwargs is not JSON" in err


def test_submit_checks_the_size_before_sending(sqs_server: Any, run_cli: Cli) -> None:
    queue = sqs_server.make_queue(attributes={"MaximumMessageSize": "1024"})
    code, _, err = run_cli("submit", queue.url, "t", "--kwargs", json.dumps({"x": "y" * 2000}))
    assert code == RET_USAGE
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
    assert code == RET_OK
    stats = json.loads(out)
    assert (stats["visible"], stats["in_flight"], stats["delayed"]) == (2, 1, 0)
    assert (stats["dead_letter"], stats["max_receive_count"]) == (1, 5)
    assert stats["dead_letter_url"] == queue.dead_letter_url
    code, out, _ = run_cli("stats", queue.url)
    assert "in flight    1" in out and "dead-letter  1" in out


def test_stats_without_redrive_policy(sqs_server: Any, sqs_queue: Any, run_cli: Cli) -> None:
    code, out, _ = run_cli("stats", sqs_queue.url)
    assert code == RET_OK
    assert "no redrive policy" in out


def test_purge_asks_unless_yes(
    sqs_server: Any, sqs_queue: Any, run_cli: Cli, monkeypatch: Any
) -> None:
    sqs_server.task_manager(sqs_queue).submit("t")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    code, _, err = run_cli("purge", sqs_queue.url)
    assert code == RET_USAGE and "--yes" in err
    assert len(sqs_queue.queue.receive_messages(WaitTimeSeconds=1, VisibilityTimeout=0)) == 1
    code, out, _ = run_cli("purge", sqs_queue.url, "--yes")
    assert code == RET_OK and "Purged" in out
    assert sqs_queue.queue.receive_messages(WaitTimeSeconds=0) == []


def test_purge_answer_no_keeps_messages(
    sqs_server: Any, sqs_queue: Any, run_cli: Cli, monkeypatch: Any
) -> None:
    sqs_server.task_manager(sqs_queue).submit("t")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    code, out, _ = run_cli("purge", sqs_queue.url)
    assert code == RET_OK and "Not purged" in out
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
    assert code == RET_IMPORT
    assert text in err


def test_worker_on_a_missing_queue_exits_ret_connect(
    sqs_server: Any, sqs_queue: Any, run_cli: Cli
) -> None:
    missing = sqs_queue.url + "-missing"
    code, _, err = run_cli("worker", "worker_apps:app", "--queue-url", missing)
    assert code == RET_CONNECT
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
    assert code == RET_USAGE
    assert text in err


def test_worker_without_queue_url_exits_ret_usage(sqs_server: Any, run_cli: Cli) -> None:
    code, _, err = run_cli("worker", "worker_apps:app")
    assert code == RET_USAGE and "--queue-url" in err


def test_region_from_url() -> None:
    assert region_from_url("https://sqs.eu-west-3.amazonaws.com/1/q") == "eu-west-3"
    assert region_from_url("https://us-east-2.queue.amazonaws.com/1/q") == "us-east-2"
    assert region_from_url("http://127.0.0.1:5000/1/q") is None


def test_region_from_a_path_form_url() -> None:
    # The form LocalStack and ElasticMQ write: http://host:port/queue/REGION/ACCOUNT/NAME
    url = "http://localhost:4566/queue/eu-central-1/000000000000/jobs"
    assert region_from_url(url) == "eu-central-1"
    assert region_from_url("http://localhost:9324/queue/jobs") is None
    localstack = "http://sqs.ap-south-1.localhost.localstack.cloud:4566/000000000000/jobs"
    assert region_from_url(localstack) == "ap-south-1"


@pytest.fixture
def no_region(monkeypatch: Any, tmp_path: Any) -> None:
    """No region in the environment or a config file, as on a fresh machine."""
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))


def test_missing_region_exits_ret_usage_and_a_path_form_url_names_it(
    sqs_server: Any, sqs_queue: Any, run_cli: Cli, no_region: None
) -> None:
    # A queue URL that names no region: exit 2, saying how to give one
    code, _, err = run_cli("stats", sqs_queue.url)
    assert code == RET_USAGE
    assert "--region" in err and "AWS_DEFAULT_REGION" in err
    code, _, err = run_cli("worker", "worker_apps:app", "--queue-url", sqs_queue.url)
    assert code == RET_USAGE and "--region" in err
    # The same queue by its path-form URL: the region is read from it
    account, name = sqs_queue.url.rsplit("/", 2)[1:]
    path_url = f"{sqs_server.endpoint_url}/queue/{sqs_server.region}/{account}/{name}"
    code, out, err = run_cli("stats", path_url)
    assert code == RET_OK, err
    assert "visible      0" in out


def test_a_message_too_large_exits_ret_usage_saying_what_to_change(
    sqs_server: Any, run_cli: Cli
) -> None:
    small = sqs_server.make_queue(attributes={"MaximumMessageSize": "1024"})
    kwargs = json.dumps({"data": "x" * 2000})
    code, _, err = run_cli("submit", small.url, "big", "--kwargs", kwargs)
    assert code == RET_USAGE
    assert "MaximumMessageSize" in err and "S3" in err
    assert small.queue.receive_messages(WaitTimeSeconds=0) == []


def test_an_invalid_request_exits_ret_usage(sqs_server: Any, run_cli: Cli) -> None:
    # A FIFO queue needs a MessageGroupId, which 0.0.11's submit does not send:
    # refused before sending, saying what to change.
    fifo = sqs_server.make_queue(fifo=True)
    code, _, err = run_cli("submit", fifo.url, "t")
    assert code == RET_USAGE
    assert "message_group_id" in err


def test_an_invalid_parameter_refused_by_sqs_is_the_callers_fault(
    sqs_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # An error the server itself answers with (a MessageGroupId missing on a FIFO send).
    fifo = sqs_server.make_queue(fifo=True)
    with pytest.raises(ClientError) as raised:
        sqs_server.client.send_message(QueueUrl=fifo.url, MessageBody="{}")
    with caplog.at_level(logging.ERROR, logger="sqstaskmaster.cli.queue_commands"):
        assert sqs_failure("send to the queue", raised.value) == RET_USAGE
    assert "MessageGroupId" in caplog.text


def test_purge_in_progress_exits_ret_error_with_its_text(
    sqs_server: Any, sqs_queue: Any, run_cli: Cli
) -> None:
    assert run_cli("purge", sqs_queue.url, "--yes")[0] == RET_OK
    code, _, err = run_cli("purge", sqs_queue.url, "--yes")
    assert code == RET_ERROR
    assert "PurgeQueueInProgress" in err and "60 seconds" in err


def test_worker_hard_timeout_beyond_12_hours_exits_ret_usage(
    sqs_server: Any, sqs_queue: Any, run_cli: Cli
) -> None:
    code, _, err = run_cli(
        "worker",
        "worker_apps:app",
        "--queue-url",
        sqs_queue.url,
        "--hard-timeout",
        "43200",
        "--burst-idle",
        "0.5",
    )
    assert code == RET_USAGE
    assert "hard_timeout of 43200 s can never fit" in err and "43140 s" in err


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
    assert result.returncode == RET_USAGE


@pytest.mark.parametrize("seconds", ["0.5", "61", "soon"])
def test_demo_continue_after_outside_1_to_60_seconds_exits_ret_usage(
    seconds: str, capsys: Any
) -> None:
    with pytest.raises(SystemExit) as exit:
        cli.main(["demo", "--continue-after", seconds])
    assert exit.value.code == RET_USAGE
    assert "--continue-after: " in capsys.readouterr().err


# -- stats --watch ----------------------------------------------------------------


def _watch(sqs_server: Any, url: str, *args: str, **popen: Any) -> subprocess.Popen:
    command = [sys.executable, "-m", "sqstaskmaster", "stats", url, *args]
    return subprocess.Popen(
        [*command, "--endpoint-url", sqs_server.endpoint_url],
        env=dict(os.environ, **sqs_server.environment),
        **popen,
    )


def test_stats_watch_prints_one_line_per_refresh_and_ctrl_c_exits_0(
    sqs_server: Any, sqs_queue: Any
) -> None:
    process = _watch(sqs_server, sqs_queue.url, "--watch", "0.3", stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        sqs_server.task_manager(sqs_queue).submit_batch([("t", {})] * 5)
        lines = [process.stdout.readline() for _ in range(3)]
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == RET_OK
    finally:
        process.kill()
        process.wait()
    assert "visible=0 (-)" in first and "in_flight=0" in first
    assert "visible=5" in lines[-1]
    # 5 messages within a second or so: a change of well over +5 per minute.
    change = float(lines[-1].split("visible=5 (")[1].split("/min")[0])
    assert change > 5
    assert "\x1b[" not in first + "".join(lines)  # no redraw codes in a pipe


def test_stats_watch_redraws_in_place_on_a_terminal(sqs_server: Any, sqs_queue: Any) -> None:
    leader, follower = pty.openpty()
    process = _watch(sqs_server, sqs_queue.url, "--watch", "0.2", stdout=follower)
    os.close(follower)
    screen = b""
    try:
        deadline = time.monotonic() + 30
        while screen.count(b"\x1b[2J") < 3 and time.monotonic() < deadline:
            if select.select([leader], [], [], 1)[0]:
                screen += os.read(leader, 4096)
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == RET_OK
    finally:
        process.kill()
        process.wait()
        os.close(leader)
    text = screen.decode()
    assert text.count("\x1b[H\x1b[2J") >= 3
    assert "change" in text and "in flight" in text and "Ctrl-C to stop" in text


def test_stats_watch_rejects_a_bad_interval(run_cli: Cli, sqs_queue: Any) -> None:
    with pytest.raises(SystemExit) as stopped:
        run_cli("stats", sqs_queue.url, "--watch", "0")
    assert stopped.value.code == RET_USAGE


def test_rates_per_minute_over_the_samples() -> None:
    from sqstaskmaster.cli.stats_watch import rates_per_minute

    history: Deque = collections.deque([(0.0, {"visible": 10, "in_flight": 0})])
    assert rates_per_minute(history) == {}
    history.append((30.0, {"visible": 4, "in_flight": 3}))
    assert rates_per_minute(history) == {"visible": -12.0, "in_flight": 6.0}


def test_worker_metrics_port_out_of_range_exits_ret_usage(
    sqs_server: Any, sqs_queue: Any, run_cli: Cli
) -> None:
    code, _, err = run_cli(
        "worker", "worker_apps:app", "--queue-url", sqs_queue.url, "--metrics-port", "70000"
    )
    assert code == RET_USAGE
    assert "70000" in err
