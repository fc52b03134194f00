"""Execution strategies: InProcess and Forked, and a worker's stop delivered without a thread.

The worker runs in this process (its poll loop in pytest's main thread), so
the tests can count this process's threads when it forks and while a task runs.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Dict, List, Optional

import pytest

from sqstaskmaster.message_handler import MessageHandler
from sqstaskmaster.run.strategies import Forked, InProcess, for_worker
from sqstaskmaster.worker.loop import Worker
from sqstaskmaster.worker.shutdown import StopController

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="Forked needs fork")


def ok() -> None:
    pass


def stops_the_parent_then_sleeps() -> None:
    # In the child: the parent (the worker) gets SIGTERM, as from ECS.
    os.kill(os.getppid(), signal.SIGTERM)
    time.sleep(30)


_seen: Dict[str, Any] = {}


def stops_itself_then_computes() -> None:
    # Signal mode: this is the worker's own process.
    _seen["threads"] = [
        t.name for t in threading.enumerate() if not t.name.startswith("pytest_timeout")
    ]
    os.kill(os.getpid(), signal.SIGTERM)
    end = time.monotonic() + 30
    while time.monotonic() < end:
        sum(range(1000))


def run_worker(sqs_server: Any, queue: Any, task: str, isolate: bool) -> Worker:
    worker = Worker(
        {
            "ok": ok,
            "forked_stop": stops_the_parent_then_sleeps,
            "signal_stop": stops_itself_then_computes,
        },
        sqs_timeout=6,
        isolate=isolate,
        shutdown_grace_s=0.5,
        poll_wait_s=0,
        burst_tasks=1,
    )
    worker.connect(queue.url, sqs=sqs_server.sqs)
    sqs_server.task_manager(queue).submit(task)
    assert worker.run_single() == 0
    return worker


def visible_now(queue: Any) -> List[Any]:
    return queue.receive_messages(MaxNumberOfMessages=1, WaitTimeSeconds=1, VisibilityTimeout=30)


def test_no_thread_but_the_main_one_when_a_worker_forks(
    sqs_server: Any, sqs_queue: Any, count_threads_at_fork: List[int]
) -> None:
    run_worker(sqs_server, sqs_queue, "ok", isolate=True)
    assert count_threads_at_fork == [1]


def test_a_stop_reaches_a_forked_task_from_the_parents_wait_loop(
    sqs_server: Any, sqs_queue: Any, count_threads_at_fork: List[int], caplog: Any
) -> None:
    caplog.set_level("INFO")
    started = time.monotonic()
    run_worker(sqs_server, sqs_queue, "forked_stop", isolate=True)
    # Stopped after the 0.5 s grace (generous bound for a loaded machine), handed back.
    assert time.monotonic() - started < 10
    assert "interrupted by shutdown" in caplog.text and "handed back" in caplog.text
    assert visible_now(sqs_queue.queue)
    assert count_threads_at_fork == [1]


def test_a_stop_reaches_a_signal_mode_task_through_its_timer(
    sqs_server: Any, sqs_queue: Any, caplog: Any
) -> None:
    caplog.set_level("INFO")
    _seen.clear()
    started = time.monotonic()
    run_worker(sqs_server, sqs_queue, "signal_stop", isolate=False)
    assert time.monotonic() - started < 10
    assert _seen["threads"] == ["MainThread"]
    assert "shutdown grace expired" in caplog.text and "handed back" in caplog.text
    assert visible_now(sqs_queue.queue)


class ReportsItsProcess(MessageHandler):
    def run(self) -> int:
        return os.getpid()

    def running(self) -> bool:
        return True

    def notify(self, exception: BaseException, context: Optional[dict] = None) -> None:
        raise AssertionError(f"unexpected {exception!r}")


def test_the_strategy_decides_where_run_runs(sqs_server: Any, sqs_queue: Any) -> None:
    for strategy, isolate, in_child in [
        (None, False, False),
        (None, True, True),
        (Forked(kill_grace_s=0.2), False, True),
        (InProcess(), True, False),
    ]:
        sqs_server.task_manager(sqs_queue).submit("x")
        [message] = sqs_queue.queue.receive_messages(WaitTimeSeconds=1, VisibilityTimeout=30)
        handler = ReportsItsProcess(message, sqs_timeout=10, alarm_timeout=5, hard_timeout=30)
        handler.execution, handler.isolate = strategy, isolate
        with handler:
            pid = handler.run()
        assert (pid != os.getpid()) is in_child, (strategy, isolate)
        assert handler._strategy_entry is None and "run" not in vars(handler)


def test_a_worker_attaches_its_stop_and_forces_isolation() -> None:
    stop = StopController(1.0)
    handler = ReportsItsProcess(None, sqs_timeout=10, alarm_timeout=5, hard_timeout=30)
    chosen = for_worker(handler, True, stop)
    assert isinstance(chosen, Forked) and chosen.stop is stop
    handler.execution = InProcess()
    kept = for_worker(handler, False, stop)
    assert isinstance(kept, InProcess) and kept.stop is stop and handler.execution.stop is None
    with pytest.raises(ValueError, match="-1"):
        Forked(kill_grace_s=-1)
