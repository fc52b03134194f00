"""Logs an operator can keep: no whole bodies, one traceback per failed task, quiet stops.

The worker runs in this process against the test server, as in test_execution.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any, List, Tuple

import pytest

from sqstaskmaster.errors import WorkerShutdownError
from sqstaskmaster.message_handler import MessageHandler
from sqstaskmaster.worker.loop import Worker

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="isolation needs fork")

TRACEBACK = "Traceback (most recent call last)"


def stops_the_worker_then_works() -> None:
    # The worker gets SIGTERM while this task runs (from the child, or itself).
    os.kill(os.getppid() if _in_child() else os.getpid(), signal.SIGTERM)
    end = time.monotonic() + 30
    while time.monotonic() < end:
        sum(range(1000))


_worker_pid: List[int] = []


def _in_child() -> bool:
    return bool(_worker_pid) and os.getpid() != _worker_pid[0]


def fails() -> None:
    raise ValueError("the task's own failure")


def make_worker(isolate: bool, notified: List[Tuple[BaseException, Any]]) -> Worker:
    _worker_pid[:] = [os.getpid()]
    return Worker(
        {"stop": stops_the_worker_then_works, "fails": fails},
        notify=lambda error, context=None: notified.append((error, context)),
        sqs_timeout=6,
        isolate=isolate,
        shutdown_grace_s=0.3,
        poll_wait_s=0,
        burst_tasks=1,
    )


def run_one_task(
    sqs_server: Any, queue: Any, task: str, isolate: bool
) -> List[Tuple[BaseException, Any]]:
    """Run ``task`` in a worker in this process; what it passed to notify."""
    notified: List[Tuple[BaseException, Any]] = []
    worker = make_worker(isolate, notified)
    worker.connect(queue.url, sqs=sqs_server.sqs)
    sqs_server.task_manager(queue).submit(task)
    assert worker.run_single() == 0
    return notified


@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "signal-mode"])
def test_a_stop_is_one_info_line_and_one_warning_never_a_traceback_or_notify(
    sqs_server: Any, sqs_queue: Any, caplog: pytest.LogCaptureFixture, isolate: bool
) -> None:
    # Given a task during which the worker gets SIGTERM and whose grace runs out
    caplog.set_level(logging.INFO)
    # When it runs
    notified = run_one_task(sqs_server, sqs_queue, "stop", isolate)
    # Then the stop is logged, the first SIGTERM at INFO, without a traceback,
    # and nothing reaches notify
    assert not [error for error, _ in notified if isinstance(error, WorkerShutdownError)]
    assert TRACEBACK not in caplog.text
    announced = [r for r in caplog.records if "SIGTERM received: warm stop" in r.getMessage()]
    assert len(announced) == 1 and announced[0].levelno == logging.INFO
    assert "handed back" in caplog.text
    assert all(r.levelno < logging.ERROR for r in caplog.records), [
        r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR
    ]


@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "signal-mode"])
def test_one_traceback_per_failed_task(
    sqs_server: Any, sqs_queue: Any, caplog: pytest.LogCaptureFixture, isolate: bool
) -> None:
    caplog.set_level(logging.INFO)
    notified = run_one_task(sqs_server, sqs_queue, "fails", isolate)
    assert caplog.text.count(TRACEBACK) == 1, caplog.text
    assert "the task's own failure" in caplog.text
    assert len(notified) == 1 and isinstance(notified[0][0], ValueError)


@pytest.mark.parametrize(
    "body",
    [
        "not json " + "x" * 50_000,  # malformed
        '{"task": "' + "y" * 50_000 + '", "kwargs": {}}',  # an unknown task, named at length
        '{"task": ["' + "z" * 50_000 + '"], "kwargs": {}}',  # a task that is not a string
    ],
    ids=["malformed", "unknown-task", "invalid-task"],
)
def test_the_worker_never_logs_a_body_in_full(
    sqs_server: Any, sqs_queue: Any, caplog: pytest.LogCaptureFixture, body: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="sqstaskmaster")
    worker = make_worker(False, [])
    worker.connect(sqs_queue.url, sqs=sqs_server.sqs)
    sqs_queue.queue.send_message(MessageBody=body)
    [message] = sqs_queue.queue.receive_messages(
        AttributeNames=["All"], WaitTimeSeconds=1, VisibilityTimeout=30
    )
    worker.process(message)
    ours = [r for r in caplog.records if r.name.startswith("sqstaskmaster")]
    assert ours
    longest = max(len(record.getMessage()) for record in ours)
    assert longest < 2_000, longest
    if body.startswith("not json"):
        # an excerpt, and the body's size in bytes
        assert any(f"({len(body.encode())} bytes)" in r.getMessage() for r in ours)


class SwallowsTheStop(MessageHandler):
    """Catches the worker's stop and works on, as `except Exception:` loops do."""

    extended: List[float] = []

    def _extend_timeout(self, seconds: int) -> None:
        SwallowsTheStop.extended.append(time.monotonic())
        super()._extend_timeout(seconds)

    def run(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        end = time.monotonic() + 3.5
        while time.monotonic() < end:
            try:
                while time.monotonic() < end:
                    sum(range(1000))
            except WorkerShutdownError:
                pass  # swallowed: the stop comes again, and the heartbeat must go on

    def running(self) -> bool:
        return True

    def notify(self, exception: BaseException, context: Any = None) -> None:
        pass


def test_a_signal_mode_task_that_swallows_the_stop_keeps_its_heartbeat(
    sqs_server: Any, sqs_queue: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a signal-mode task that catches the stop and runs on past its grace
    caplog.set_level(logging.INFO)
    SwallowsTheStop.extended.clear()
    worker = Worker(
        {"swallow": SwallowsTheStop},
        sqs_timeout=3,
        alarm_timeout=1,
        isolate=False,
        shutdown_grace_s=0.2,
        poll_wait_s=0,
        burst_tasks=1,
    )
    worker.connect(sqs_queue.url, sqs=sqs_server.sqs)
    sqs_server.task_manager(sqs_queue).submit("swallow")
    started = time.monotonic()
    assert worker.run_single() == 0
    # Then its message is kept invisible while it runs: a heartbeat every second
    beats = [t for t in SwallowsTheStop.extended if t > started + 0.5]
    assert len(beats) >= 2, SwallowsTheStop.extended
    # and the first SIGTERM was logged when it came, before the task ended
    messages = [r.getMessage() for r in caplog.records]
    announced = next(i for i, m in enumerate(messages) if "SIGTERM received" in m)
    ended = next(i for i, m in enumerate(messages) if "task swallow message" in m and " in " in m)
    assert announced < ended, messages
