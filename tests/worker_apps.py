"""Task apps for the worker's end-to-end tests: ``worker_apps:<name>`` with tests/ on the path.

Tasks leave traces in the directory named by ``SQSTM_TEST_DIR`` (one file per
event), so a test can see from outside which process ran what, and when.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Optional

from sqstaskmaster.message_handler import MessageHandler
from sqstaskmaster.sqs.facts import MAX_VISIBILITY_S
from sqstaskmaster.worker.loop import Worker


def _trace(kind: str, key: str, **data: Any) -> None:
    directory = os.environ.get("SQSTM_TEST_DIR")
    if not directory:
        return
    data.update(pid=os.getpid(), ppid=os.getppid(), time=time.time())
    path = os.path.join(directory, f"{kind}.{key}.{os.getpid()}.{time.monotonic_ns()}")
    with open(path + ".tmp", "w") as handle:
        json.dump(data, handle)
    os.replace(path + ".tmp", path)


def ok(key: str = "ok") -> None:
    _trace("start", key)
    _trace("done", key)


def sleep(key: str, seconds: float) -> None:
    _trace("start", key)
    time.sleep(seconds)
    _trace("done", key)


def sleep_first(key: str, seconds: float) -> None:
    """Sleeps ``seconds`` on its first run only (a marker file remembers the first run)."""
    directory = os.environ["SQSTM_TEST_DIR"]
    marker = os.path.join(directory, f"marker.{key}")
    first = not os.path.exists(marker)
    open(marker, "a").close()
    _trace("start", key)
    if first:
        time.sleep(seconds)
    _trace("done", key)


def fail(key: str = "fail") -> None:
    _trace("start", key)
    raise RuntimeError(f"task {key} fails on purpose")


def exit_task(key: str = "exit", code: int = 0) -> None:
    """Asks to end its process, as a careless task would."""
    _trace("start", key)
    sys.exit(code)


def hard_exit_first(key: str) -> None:
    """Ends its process at once with exit code 0 on its first run only (no cleanup)."""
    marker = os.path.join(os.environ["SQSTM_TEST_DIR"], f"marker.{key}")
    first = not os.path.exists(marker)
    open(marker, "a").close()
    _trace("start", key)
    if first:
        os._exit(0)
    _trace("done", key)


class Echo(MessageHandler):
    """A 0.0.11-style handler class."""

    def __init__(self, message, sqs_timeout, alarm_timeout, hard_timeout=60, **kwargs):
        super().__init__(message, sqs_timeout, alarm_timeout, hard_timeout)
        self.kwargs = kwargs

    def run(self) -> None:
        _trace("start", self.kwargs.get("key", "echo"))
        _trace("done", self.kwargs.get("key", "echo"))

    def running(self) -> bool:
        return True

    def notify(self, exception: BaseException, context: Optional[dict] = None) -> None:
        pass


class ReturnsSet(Echo):
    """A 0.0.11 handler whose run() returns what JSON cannot carry, after its work is done."""

    def run(self) -> Any:
        super().run()
        return {"a", "set"}


TASKS = {
    "ok": ok,
    "sleep": sleep,
    "sleep_first": sleep_first,
    "fail": fail,
    "echo": Echo,
    "exit": exit_task,
    "hard_exit_first": hard_exit_first,
    "returns_set": ReturnsSet,
}

app = Worker(dict(TASKS))

# Gives up at its first failed poll.
impatient = Worker(dict(TASKS))
impatient.max_poll_failures = 1


class TooLong(Echo):
    """A handler that sets its own hard timeout longer than any receive's 12 hours.

    No receive can hold it, so the worker refuses it: the "refused" outcome.
    """

    def __init__(self, message, sqs_timeout, alarm_timeout, hard_timeout=60, **kwargs):
        super().__init__(message, sqs_timeout, alarm_timeout, MAX_VISIBILITY_S, **kwargs)


# Every outcome the metrics and JSON-log tests need: "stuck" times out after
# 1 s; "too_long" fits no receive's 12-hour budget (refused); "steps" goes on
# in continuation messages (continued).
watched = Worker(dict(TASKS))
watched.register("stuck", sleep, hard_timeout=1)
watched.register("too_long", TooLong)


def stepper(key: str, total: int, step_s: float, *, context: Any) -> None:
    """A resumable task of ``total`` steps: one checkpoint after each, a look at the stop first."""
    step = (context.state or {}).get("step", 0)
    _trace("resumed", key, step=step, continuation=context.continuation)
    while step < total:
        if context.stop_requested:
            _trace("wrapped_up", key, step=step, continuation=context.continuation)
            return
        started = time.time()
        time.sleep(step_s)
        step += 1
        _trace(
            "step",
            key,
            step=step,
            started=started,
            message_id=context.message_id,
            continuation=context.continuation,
        )
        context.checkpoint({"step": step})
    _trace("done", key, step=step, continuation=context.continuation)


def checkpoint_then_hang(key: str, *, context: Any) -> None:
    """Saves one checkpoint, then ignores every stop request (it is killed after the grace)."""
    _trace("start", key, continuation=context.continuation, state=context.state)
    if context.state is None:
        context.checkpoint({"step": 7, "note": "saved before the kill"})
        time.sleep(60)
    _trace("done", key)


# Resumable tasks: checkpoints and continuation messages (test_continuation.py).
resumable_app = Worker(dict(TASKS))
resumable_app.register("stepper", stepper, resumable=True, hard_timeout=600)
resumable_app.register("checkpoint_then_hang", checkpoint_then_hang, hard_timeout=600)
watched.register("steps", stepper, resumable=True, hard_timeout=60)


def answer(key: str, value: Any) -> Any:
    """Returns ``value`` (the status table stores it as the task's result)."""
    _trace("done", key)
    return value


def progressing(key: str, steps: int, step_s: float, *, context: Any) -> str:
    """Reports its progress after each of ``steps`` steps."""
    for step in range(1, steps + 1):
        time.sleep(step_s)
        context.progress(step / steps, f"step {step} of {steps}")
        _trace("step", key, step=step)
    return f"{steps} steps"


def until_stopped(key: str, seconds: float, cooperative: bool = True, *, context: Any) -> None:
    """Runs up to ``seconds``; once asked to stop, returns (``cooperative``) or ignores it."""
    _trace("start", key)
    end = time.monotonic() + seconds
    seen = False
    while time.monotonic() < end:
        if not seen and context.stop_requested:
            seen = True
            _trace("stop_seen", key)
            if cooperative:
                return
        time.sleep(0.05)
    _trace("done", key)


# The status table (test_status_worker.py).
status_app = Worker(dict(TASKS))
status_app.register("answer", answer)
status_app.register("progressing", progressing)
status_app.register("until_stopped", until_stopped, hard_timeout=120)
status_app.register("stuck", sleep, hard_timeout=1)
