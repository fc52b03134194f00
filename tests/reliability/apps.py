"""Task apps for the reliability suite: ``reliability.apps:app`` with tests/ on the path.

Every task run leaves one file per event in the directory named by
``SQSTM_RELIABILITY_DIR`` (``start.<key>.<pid>.<ns>``, ``done.<key>.<pid>.<ns>``),
and every notify call one ``notify.<ErrorType>.<pid>.<ns>`` file holding the
error's text, so a test counts from outside, after any number of kills, what
ran how often and what was reported. Files are created with O_EXCL and never
rewritten, so a killed process leaves at worst an event it already wrote.
The resumable ``steps`` task also writes ``run``, ``begin`` and ``step``
events: where each of its runs starts, and each step's start and end.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any, Dict, Optional

from sqstaskmaster.message_handler import MessageHandler
from sqstaskmaster.run.context import TaskContext
from sqstaskmaster.worker.loop import Worker

DIRECTORY_VARIABLE = "SQSTM_RELIABILITY_DIR"


def record(kind: str, key: str, **data: Any) -> None:
    """Write one event file (nothing when the directory variable is unset)."""
    directory = os.environ.get(DIRECTORY_VARIABLE)
    if not directory:
        return
    data.update(pid=os.getpid(), time=time.time())
    name = f"{kind}.{key}.{os.getpid()}.{time.monotonic_ns()}"
    fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, json.dumps(data).encode())
    finally:
        os.close(fd)


def notify(exception: BaseException, context: Optional[Dict[str, Any]] = None) -> None:
    """The worker's notify: one file per call, named by the error's type."""
    body = (context or {}).get("body")
    record("notify", type(exception).__name__, error=str(exception), body=body)


def work(key: str, seconds: float = 0.0) -> None:
    """A well-behaved task: sleeps ``seconds``."""
    record("start", key)
    if seconds:
        time.sleep(seconds)
    record("done", key)


def spawns(key: str, seconds: float = 300.0) -> None:
    """On its first run starts ``sleep 300`` and sleeps ``seconds``; a later run completes.

    Its start event holds its process group, its parent (the worker process)
    and the sleep's pid. A marker file per key tells the first run.
    """
    marker = os.path.join(os.environ[DIRECTORY_VARIABLE], f"marker.{key}")
    first = not os.path.exists(marker)
    open(marker, "a").close()
    facts: Dict[str, Any] = dict(group=os.getpgrp(), worker=os.getppid(), first=first)
    if first:
        facts["sleeper"] = subprocess.Popen(["sleep", "300"]).pid
    record("start", key, **facts)
    if first:
        time.sleep(seconds)
    record("done", key)


def poison(key: str) -> None:
    """Always fails."""
    record("start", key)
    raise RuntimeError(f"poison task {key} fails on every run")


def hang(key: str) -> None:
    """Never ends by itself (registered with a 1-second hard timeout)."""
    record("start", key)
    while True:
        time.sleep(0.05)


def flaky(key: str, fails: int = 0) -> None:
    """Fails its first ``fails`` runs (counted from its own start events), then is done."""
    record("start", key)
    directory = os.environ.get(DIRECTORY_VARIABLE) or ""
    runs = sum(1 for name in os.listdir(directory) if name.startswith(f"start.{key}."))
    if runs <= fails:
        raise RuntimeError(f"flaky task {key} fails run {runs} of its first {fails}")
    record("done", key)


def takes_number(key: str, number: int) -> None:
    """Fails unless ``number`` is an int (a message with wrongly typed kwargs)."""
    record("start", key)
    if not isinstance(number, int):
        raise TypeError(f"number must be an int, got {number!r}")
    record("done", key)


def steps(key: str, total: int, step_s: float, *, context: TaskContext) -> None:
    """A resumable task: ``total`` steps of ``step_s`` seconds, a checkpoint after each.

    A run goes on from the checkpoint its message carries and returns, between
    two steps, once the worker asks it to stop. Its events carry the run's
    id, the worker process (the task child's parent), the message id, the
    receive count and the continuation number: ``run`` (the step it starts
    from), ``begin`` (a step's start), ``step`` (a step's end, with its start
    and end times), ``stop`` (it returned when asked), ``done`` (all steps).
    """
    step = (context.state or {"step": 0})["step"]
    facts: Dict[str, Any] = dict(
        run=f"{os.getpid()}-{time.monotonic_ns()}",
        worker=os.getppid(),
        message_id=context.message_id,
        receive_count=context.receive_count,
        continuation=context.continuation,
    )
    record("run", key, step=step, **facts)
    while step < total:
        if context.stop_requested:
            record("stop", key, step=step, **facts)
            return
        started = time.time()
        record("begin", key, step=step + 1, **facts)
        time.sleep(step_s)
        step += 1
        record("step", key, step=step, started=started, ended=time.time(), **facts)
        context.checkpoint({"step": step})
    record("done", key, **facts)


class PoisonHandler(MessageHandler):
    """A 0.0.11-style handler class whose run() always fails."""

    def __init__(self, message, sqs_timeout, alarm_timeout, hard_timeout=60, key="class"):
        super().__init__(message, sqs_timeout, alarm_timeout, hard_timeout)
        self.key = key

    def run(self) -> None:
        record("start", self.key)
        raise ValueError(f"handler class task {self.key} fails on every run")

    def running(self) -> bool:
        return True

    def notify(self, exception: BaseException, context: Optional[dict] = None) -> None:
        notify(exception, context)


app = Worker(
    {
        "work": work,
        "poison": poison,
        "takes_number": takes_number,
        "spawns": spawns,
        "flaky": flaky,
    },
    notify=notify,
)
app.register("hang", hang, hard_timeout=1)
app.register("poison_class", PoisonHandler)
app.register("steps", steps, hard_timeout=300, resumable=True)
