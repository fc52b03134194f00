"""Work beside a running task: no thread start failure ends it, and no SIGALRM storm.

Heartbeats (isolated) and a worker's chores (both modes) run in helper
threads. Under a ``pids.max`` limit ``Thread.start`` raises RuntimeError: the
work is then done inline, the task goes on and one warning says so. A chores
run in flight does not make the signal-mode timer poll for its end.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, List, Optional
from unittest.mock import patch

import pytest

from sqstaskmaster.local import LocalMessage
from sqstaskmaster.message_handler import MessageHandler
from sqstaskmaster.run.strategies import Execution, Forked, InProcess
from sqstaskmaster.run.timer import SignalTimer

FALLBACK_TEXT = "cannot start a helper thread"


class Chores:
    """A worker's chores, as the strategies see them: due every ``every_s`` seconds."""

    def __init__(self, every_s: float, first_s: float = 0.2) -> None:
        self.every_s = every_s
        self.due: Optional[float] = time.monotonic() + first_s
        self.runs: List[float] = []

    def due_at(self) -> Optional[float]:
        return self.due

    def run_due(self) -> None:
        self.runs.append(time.monotonic())
        self.due = time.monotonic() + self.every_s


class Sleeps(MessageHandler):
    """Sleeps ``seconds``; records each heartbeat's visibility change (in this process)."""

    seconds = 3.5

    def __init__(self, message: Any, sqs_timeout: int, alarm_timeout: int, hard_timeout: int):
        super().__init__(message, sqs_timeout, alarm_timeout, hard_timeout)
        self.extensions: List[int] = []

    def _extend_timeout(self, seconds: int) -> None:
        self.extensions.append(seconds)
        super()._extend_timeout(seconds)

    def run(self) -> None:
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            time.sleep(0.05)

    def running(self) -> bool:
        return True

    def notify(self, exception: BaseException, context: Optional[dict] = None) -> None:
        pass


def received(sqs_server: Any, sqs_queue: Any) -> Any:
    sqs_server.task_manager(sqs_queue).submit("sleeps")
    [message] = sqs_queue.queue.receive_messages(WaitTimeSeconds=5, VisibilityTimeout=30)
    return message


@pytest.mark.parametrize(
    "strategy",
    [
        pytest.param(InProcess(), id="signal-mode"),
        pytest.param(
            Forked(kill_grace_s=0.2),
            id="isolated",
            marks=pytest.mark.skipif(not hasattr(os, "fork"), reason="Forked needs fork"),
        ),
    ],
)
def test_a_task_goes_on_when_no_thread_can_be_started(
    sqs_server: Any, sqs_queue: Any, caplog: Any, strategy: Execution
) -> None:
    # Given a task with 1 s heartbeats and chores due every 0.5 s
    caplog.set_level("WARNING")
    message = received(sqs_server, sqs_queue)
    chores = Chores(every_s=0.5)
    handler = Sleeps(message, sqs_timeout=3, alarm_timeout=1, hard_timeout=30)
    handler.execution = strategy.with_stop(None, chores)
    # When no thread can be started while it runs (pids.max is full)
    failing = RuntimeError("can't start new thread")
    with patch.object(threading.Thread, "start", side_effect=failing) as start:
        with handler:
            handler.run()
    # Then it completed, with its heartbeats and its chores done inline
    assert start.called
    assert handler.error is None, handler.error
    assert len(handler.extensions) >= 3, handler.extensions  # entry and >= 2 heartbeats
    assert len(chores.runs) >= 3, chores.runs
    # And one warning, naming the task and the message, said so
    warnings = [r.getMessage() for r in caplog.records if FALLBACK_TEXT in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "Sleeps" in warnings[0] and message.message_id in warnings[0]


class SlowChores(Chores):
    """The first run hangs 2 s (a stuck flush); the next one is due 0.3 s after it."""

    def run_due(self) -> None:
        self.runs.append(time.monotonic())
        if len(self.runs) == 1:
            time.sleep(2)
            self.due = time.monotonic() + 0.3
        else:
            self.due = None


class WaitsForChores(Sleeps):
    chores: Optional[SlowChores] = None

    def run(self) -> None:
        end = time.monotonic() + 8
        while self.chores is not None and len(self.chores.runs) < 2 and time.monotonic() < end:
            time.sleep(0.01)


def test_a_chores_run_in_flight_sends_no_sigalrm_storm_into_a_signal_mode_task() -> None:
    # Given a signal-mode task (heartbeat every 10 s) whose chores hang for 2 s
    chores = SlowChores(every_s=0)
    handler = WaitsForChores(LocalMessage("{}", {}, {}), 30, 10, 60)
    handler.chores = chores
    handler.execution = InProcess().with_stop(None, chores)
    firings: List[float] = []
    handle = SignalTimer._handle

    def counting(timer: SignalTimer, signum: int, frame: Any) -> None:
        firings.append(time.monotonic())
        handle(timer, signum, frame)

    # When it runs until the chores ran twice
    with patch.object(SignalTimer, "_handle", counting):
        with handler:
            handler.run()
    # Then the task saw a handful of SIGALRMs, not one every 20 ms
    assert handler.error is None, handler.error
    assert len(chores.runs) == 2, chores.runs
    assert len(firings) <= 5, len(firings)
    # And the second run came soon after the first ended, not at the next heartbeat
    first_ended = chores.runs[0] + 2
    assert chores.runs[1] - first_ended < 2.0, chores.runs


class HangingChores(Chores):
    """Its first run hangs ``hang_s`` (a flush stuck in retries); then nothing is due."""

    def __init__(self, hang_s: float) -> None:
        super().__init__(every_s=0, first_s=0.0)
        self.hang_s = hang_s

    def run_due(self) -> None:
        self.runs.append(time.monotonic())
        self.due = None
        time.sleep(self.hang_s)


class Quick(Sleeps):
    seconds = 0.1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="Forked needs fork")
def test_a_task_child_is_never_forked_beside_a_chores_run_still_on(
    count_threads_at_fork: List[int], caplog: Any
) -> None:
    # Given an isolated task whose chores run outlasts it and the 2 s the task's
    # end waits for it (a flush stuck in retries)
    caplog.set_level("WARNING")
    chores = HangingChores(hang_s=3.5)
    strategy = Forked(kill_grace_s=0.2).with_stop(None, chores)
    first = Quick(LocalMessage("{}", {}, {}), 30, 10, 60)
    first.execution = strategy
    with first:
        first.run()
    assert any(t.name.startswith("chores") for t in threading.enumerate())
    # When the next task forks its child
    second = Quick(LocalMessage("{}", {}, {}), 30, 10, 60)
    second.execution = Forked(kill_grace_s=0.2)
    with second:
        second.run()
    # Then it waited for that run to end: the worker had one thread at each fork
    assert first.error is None and second.error is None
    assert count_threads_at_fork and set(count_threads_at_fork) == {1}, count_threads_at_fork
    assert any("before forking the task" in r.getMessage() for r in caplog.records)
