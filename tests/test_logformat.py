"""``--log-format json``: one JSON object per line, with the task fields where known.

The 2-process run with every outcome (isolation mode) is checked in
test_metrics.py; here the formatter itself, the CLI flag, and a signal-mode
worker run.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from sqstaskmaster.ops import logformat
from sqstaskmaster.worker.retry import RetryPolicy


def record(message: str = "hello %s", *args: Any, **extra: Any) -> logging.LogRecord:
    log = logging.getLogger("test.logformat")
    made = log.makeRecord(log.name, logging.WARNING, __file__, 1, message, args or ("x",), None)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_a_line_has_the_base_fields() -> None:
    line = json.loads(logformat.JsonFormatter().format(record()))
    assert line["message"] == "hello x"
    assert (line["level"], line["logger"]) == ("WARNING", "test.logformat")
    assert line["time"].endswith("Z") and "T" in line["time"]
    assert not {"task", "message_id", "outcome"} & set(line)


def test_task_context_tags_lines_and_extra_wins() -> None:
    formatter = logformat.JsonFormatter()
    with logformat.task_context(task="resize", message_id="m-1", receive_count=2):
        logformat.add_to_context(outcome="done", duration_s=1.25)
        line = json.loads(formatter.format(record()))
        own = json.loads(formatter.format(record(task="other")))
    after = json.loads(formatter.format(record()))
    assert (line["task"], line["message_id"], line["receive_count"]) == ("resize", "m-1", 2)
    assert (line["outcome"], line["duration_s"]) == ("done", 1.25)
    assert own["task"] == "other"
    assert "task" not in after and "outcome" not in after


def test_an_exception_is_one_field_on_one_line() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logformat.JsonFormatter())
    log = logging.getLogger("test.logformat.exception")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise ValueError("bad value 42")
        except ValueError:
            log.exception("it broke")
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert line["message"] == "it broke"
    assert "Traceback" in line["exception"] and "ValueError: bad value 42" in line["exception"]


def test_unknown_format_names_the_value() -> None:
    with pytest.raises(ValueError, match="'xml'"):
        logformat.configure(logging.INFO, "xml")


@pytest.mark.parametrize("where", ["before", "after"])
def test_cli_log_format_json(where: str, sqs_server: Any, tmp_path: Path) -> None:
    # A command that logs an error: stats on a queue that does not exist.
    url = f"{sqs_server.endpoint_url}/123456789012/no-such-queue"
    args = ["stats", url, "--endpoint-url", sqs_server.endpoint_url]
    flag = ["--log-format", "json"]
    command = [*flag, *args] if where == "before" else [*args, *flag]
    result = subprocess.run(
        [sys.executable, "-m", "sqstaskmaster", *command],
        env=dict(os.environ, **sqs_server.environment),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 4
    lines = [json.loads(text) for text in result.stderr.splitlines()]
    assert lines and lines[-1]["level"] == "ERROR" and "no-such-queue" in lines[-1]["message"]


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logformat.JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_signal_mode_run_logs_every_outcome_as_json(
    sqs_server: Any, sqs_queue: Any, json_log: io.StringIO
) -> None:
    import worker_apps

    worker = worker_apps.watched.replace(
        isolate=False,
        poll_wait_s=1,
        burst_idle_s=2,
        sqs_timeout=6,
        alarm_timeout=1,
        retry=RetryPolicy(first_s=3600),  # each message is handled once
    )
    tm = sqs_server.task_manager(sqs_queue)
    tm.submit("ok", key="j-ok")
    tm.submit("fail", key="j-fail")
    tm.submit("stuck", key="j-stuck", seconds=10)
    tm.submit("too_long", key="j-long")
    tm.submit("nope")
    sqs_queue.queue.send_message(MessageBody="{not json")
    worker.connect(
        sqs_queue.url, sqs=sqs_server.session.resource("sqs", endpoint_url=sqs_server.endpoint_url)
    )
    assert worker.run_single() == 0
    lines: List[Dict[str, Any]] = [json.loads(text) for text in json_log.getvalue().splitlines()]
    by_outcome: Dict[str, Dict[str, Any]] = {}
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line)
        if "outcome" in line:
            by_outcome.setdefault(line["outcome"], line)
    assert set(by_outcome) == {"done", "failed", "timed_out", "refused", "unknown", "invalid"}
    for outcome, line in by_outcome.items():
        assert line["message_id"] and line["receive_count"] == 1, line
        if outcome != "invalid":
            assert line["task"], line
        if outcome in ("done", "failed", "timed_out"):
            assert line["duration_s"] >= 0, line
    # The failed task's traceback is a field of its line, not lines of its own.
    assert any("RuntimeError: task j-fail" in line.get("exception", "") for line in lines)
