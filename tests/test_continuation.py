"""Checkpoints and continuation messages: a task goes on past its receive, a stop, a kill.

Workers run in this process (every execution mode) or as ``python -m
sqstaskmaster worker worker_apps:resumable_app`` subprocesses, against the
test SQS server. Tasks leave one trace file per step (``worker_apps._trace``):
which process ran which step, from which message, when.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import worker_apps as apps
from worker_process import traces, wait_for

from sqstaskmaster import TaskContext
from sqstaskmaster.errors import CheckpointRefusedError
from sqstaskmaster.message_handler import MessageHandler
from sqstaskmaster.run.checkpoint_box import CheckpointBox
from sqstaskmaster.sqs import continuation
from sqstaskmaster.sqs.continuation import Carried, deduplication_id
from sqstaskmaster.testing import FakeMetadataService
from sqstaskmaster.worker.loop import Worker
from sqstaskmaster.worker.retry import RetryPolicy

THIRTEEN_HOURS_S = 13 * 60 * 60
RESUMABLE = "worker_apps:resumable_app"


def receive_all(queue: Any, visibility: int = 30, wait_s: int = 1) -> List[Any]:
    return queue.receive_messages(
        AttributeNames=["All"],
        MessageAttributeNames=["All"],
        MaxNumberOfMessages=10,
        WaitTimeSeconds=wait_s,
        VisibilityTimeout=visibility,
    )


class Recorder:
    def __init__(self) -> None:
        self.errors: List[BaseException] = []

    def __call__(self, exception: BaseException, context: Optional[Dict[str, Any]] = None) -> None:
        self.errors.append(exception)


def assert_one_copy_at_a_time(steps: List[Dict[str, Any]]) -> None:
    """No step started before the step before it (in time) had ended: never two copies."""
    ordered = sorted(steps, key=lambda step: step["started"])
    for before, after in zip(ordered, ordered[1:]):
        assert after["started"] >= before["time"] - 0.01, (before, after)


# -- in this process, every execution mode ----------------------------------------------


MODES = {
    "isolated": {"isolate": True},
    "reused-child": {"isolate": True, "max_tasks_per_child": 10},
    "signal-mode": {"isolate": False},
}


@pytest.mark.parametrize("mode", list(MODES))
def test_a_resumable_task_goes_on_in_continuation_messages(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, mode: str
) -> None:
    worker = Worker(
        continue_after_s=1,
        shutdown_grace_s=2,
        poll_wait_s=1,
        burst_idle_s=2,
        sqs_timeout=6,
        **MODES[mode],
    )
    worker.register("stepper", apps.stepper, resumable=True, hard_timeout=60)
    worker.connect(sqs_queue.url, sqs=sqs_server.sqs)
    sqs_server.task_manager(sqs_queue).submit("stepper", key="s", total=12, step_s=0.25)
    worker.run_single()
    steps = traces(trace_dir, "step", "s")
    assert [step["step"] for step in steps] == list(range(1, 13))  # none lost, none twice
    numbers = sorted({step["continuation"] for step in steps})
    assert numbers == list(range(len(numbers))) and len(numbers) >= 3
    assert len({step["message_id"] for step in steps}) == len(numbers)
    # Each continuation resumed from the step its message's checkpoint held.
    for resumed in traces(trace_dir, "resumed", "s"):
        before = [s["step"] for s in steps if s["continuation"] < resumed["continuation"]]
        assert resumed["step"] == max(before, default=0)
    assert sqs_queue.queue.receive_messages(WaitTimeSeconds=0) == []


def test_twenty_one_second_steps_cross_six_messages_on_two_workers_one_copy_at_a_time(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, start_worker: Any
) -> None:
    options = ("--continue-after", "3", "--shutdown-grace", "3", "--sqs-timeout", "10")
    workers = [start_worker(sqs_queue.url, *options, app=RESUMABLE, name=f"w{n}") for n in range(2)]
    sqs_server.task_manager(sqs_queue).submit("stepper", key="t", total=20, step_s=1)
    wait_for(lambda: traces(trace_dir, "done", "t"), 90, "all 20 steps done")
    steps = traces(trace_dir, "step", "t")
    messages = {step["message_id"] for step in steps}
    assert len(messages) >= 6, messages
    numbers = sorted({step["continuation"] for step in steps})
    assert numbers == list(range(len(messages)))
    done = [step["step"] for step in steps]
    assert sorted(set(done)) == list(range(1, 21))
    assert len(done) - 20 <= len(numbers) - 1  # at most one step lost per continuation
    assert_one_copy_at_a_time(steps)
    for worker in workers:
        assert worker.stop() == 0
    logs = "".join(worker.log for worker in workers)
    assert logs.count("continued as message") == len(messages) - 1


def test_sigterm_in_the_middle_continues_on_a_second_worker_from_the_last_checkpoint(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, start_worker: Any
) -> None:
    first = start_worker(
        sqs_queue.url, "--shutdown-grace", "5", "--sqs-timeout", "10", app=RESUMABLE, name="a"
    )
    sqs_server.task_manager(sqs_queue).submit("stepper", key="m", total=8, step_s=0.5)
    wait_for(lambda: len(traces(trace_dir, "step", "m")) >= 3, 30, "three steps")
    first.signal(signal.SIGTERM)
    assert first.wait(15) == 0
    assert "continued as message" in first.log
    before = traces(trace_dir, "step", "m")
    last = max(step["step"] for step in before)
    wrapped = traces(trace_dir, "wrapped_up", "m")
    assert wrapped and wrapped[0]["step"] == last  # it checkpointed, then returned

    second = start_worker(sqs_queue.url, app=RESUMABLE, name="b")
    wait_for(lambda: traces(trace_dir, "done", "m"), 30, "the task done on the second worker")
    resumed = [r for r in traces(trace_dir, "resumed", "m") if r["continuation"] == 1]
    assert resumed and resumed[0]["step"] == last and resumed[0]["pid"] != before[0]["pid"]
    steps = traces(trace_dir, "step", "m")
    assert [step["step"] for step in steps] == list(range(1, 9))  # nothing lost, nothing twice
    assert_one_copy_at_a_time(steps)
    assert second.stop() == 0


def test_a_spot_notice_continues_the_task_on_a_second_worker_within_ten_seconds(
    sqs_server: Any,
    sqs_queue: Any,
    trace_dir: Path,
    start_worker: Any,
    metadata_service: FakeMetadataService,
) -> None:
    first = start_worker(
        sqs_queue.url,
        *("--shutdown-grace", "5", "--spot-notice", "auto"),
        app=RESUMABLE,
        name="spot",
        env=metadata_service.environment(),
    )
    sqs_server.task_manager(sqs_queue).submit("stepper", key="n", total=30, step_s=0.5)
    wait_for(lambda: len(traces(trace_dir, "step", "n")) >= 2, 30, "two steps")
    wait_for(lambda: metadata_service.notice_requests, 10, "the supervisor's first poll")
    metadata_service.announce()
    announced = time.time()
    assert first.wait(15) == 0
    assert "spot interruption notice" in first.log and "continued as message" in first.log
    wrapped = wait_for(lambda: traces(trace_dir, "wrapped_up", "n"), 5, "wrapped up")
    assert wrapped[0]["time"] - announced < 10  # stopped within 10 s of the notice
    last = wrapped[0]["step"]
    second = start_worker(sqs_queue.url, app=RESUMABLE, name="after-spot")
    resumed = wait_for(
        lambda: [r for r in traces(trace_dir, "resumed", "n") if r["continuation"] == 1],
        15,
        "the second worker resumed",
    )
    assert resumed[0]["step"] == last and resumed[0]["pid"] != wrapped[0]["pid"]
    assert second.stop() == 0


def test_a_checkpoint_survives_the_kill_of_its_child_and_travels_in_the_attributes(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, start_worker: Any
) -> None:
    # Not resumable: a task that saved a checkpoint is continued, not handed back, on a stop.
    worker = start_worker(
        sqs_queue.url, "--shutdown-grace", "1", "--sqs-timeout", "10", app=RESUMABLE
    )
    tasks = sqs_server.task_manager(sqs_queue)
    tasks.submit("checkpoint_then_hang", key="k")
    first = wait_for(lambda: traces(trace_dir, "start", "k"), 30, "the task started")[0]
    time.sleep(0.5)
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert "SIGKILL" in worker.log or "SIGTERM to process group" in worker.log
    (message,) = wait_for(lambda: receive_all(sqs_queue.queue), 10, "the continuation")
    carried = Carried.of(message)
    assert json.loads(message.body)["task"] == "checkpoint_then_hang"
    assert json.loads(carried.checkpoint or "null") == {"step": 7, "note": "saved before the kill"}
    assert carried.continuation == 1 and carried.run_s > 0
    assert carried.first_started is not None and abs(carried.first_started - first["time"]) < 5
    original = [line for line in worker.log.splitlines() if "continued as message" in line]
    assert original and message.message_id in original[0]
    assert carried.first_message_id and carried.first_message_id in original[0]


# -- refused checkpoints -------------------------------------------------------------


def refusals(key: str, *, context: TaskContext) -> None:
    results = [
        context.checkpoint({"a", "set"}),
        context.checkpoint(float("nan")),
        context.checkpoint("x" * (continuation.MAX_CHECKPOINT_BYTES + 1)),
        context.checkpoint({"ok": 1}),
    ]
    apps._trace("results", key, results=results, state=context.state)


@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "signal-mode"])
def test_a_checkpoint_json_cannot_carry_or_too_large_is_refused_and_the_task_goes_on(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, isolate: bool, caplog: Any
) -> None:
    notify = Recorder()
    worker = Worker({"refusals": refusals}, isolate=isolate, notify=notify, sqs_timeout=6)
    worker.connect(sqs_queue.url, sqs=sqs_server.sqs)
    sqs_server.task_manager(sqs_queue).submit("refusals", key="r")
    (message,) = receive_all(sqs_queue.queue)
    assert worker.process(message) == "done"
    (result,) = traces(trace_dir, "results", "r")
    assert result["results"] == [False, False, False, True] and result["state"] == {"ok": 1}
    if not isolate:  # an isolated child's notify and log run in the child
        texts = [str(error) for error in notify.errors]
        assert len(texts) == 3 and all(isinstance(e, CheckpointRefusedError) for e in notify.errors)
        assert "JSON cannot carry it" in texts[0] and "set" in texts[0]
        assert "over the 262144 bytes" in texts[2]
        assert "checkpoint refused" in caplog.text


# -- what is not resumable keeps today's limits ------------------------------------------


def test_only_a_resumable_task_may_have_a_hard_timeout_past_twelve_hours() -> None:
    worker = Worker()
    worker.register("long", apps.stepper, hard_timeout=THIRTEEN_HOURS_S)
    with pytest.raises(ValueError, match="12-hour"):
        worker.check()
    worker.register("long", apps.stepper, hard_timeout=THIRTEEN_HOURS_S, resumable=True)
    worker.check()

    class Training(MessageHandler):
        resumable = True

        def run(self) -> None: ...

        def running(self) -> bool:
            return True

        def notify(self, exception: BaseException, context: Any = None) -> None: ...

    worker = Worker({"train": Training})
    assert worker.registry["train"].resumable
    worker.register("train", Training, hard_timeout=THIRTEEN_HOURS_S)
    worker.check()


def test_a_resumable_task_runs_past_twelve_hours_across_messages_only(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path
) -> None:
    # A 13-hour resumable task on a fresh receive: it starts, and this run ends
    # at continue_after, not at its hard timeout.
    worker = Worker(continue_after_s=1, shutdown_grace_s=1, sqs_timeout=6)
    worker.register("stepper", apps.stepper, resumable=True, hard_timeout=THIRTEEN_HOURS_S)
    worker.connect(sqs_queue.url, sqs=sqs_server.sqs)
    sqs_server.task_manager(sqs_queue).submit("stepper", key="l", total=40, step_s=0.2)
    (message,) = receive_all(sqs_queue.queue)
    started = time.monotonic()
    assert worker.process(message) == "continued"
    assert time.monotonic() - started < 5
    (follow,) = wait_for(lambda: receive_all(sqs_queue.queue), 10, "the continuation")
    assert Carried.of(follow).continuation == 1


def test_a_resumable_task_that_ran_its_whole_hard_timeout_is_dead_lettered(
    sqs_server: Any, trace_dir: Path
) -> None:
    queue = sqs_server.make_queue(dead_letter=True)
    notify = Recorder()
    worker = Worker(notify=notify, sqs_timeout=6)
    worker.register("stepper", apps.stepper, resumable=True, hard_timeout=600)
    worker.connect(queue.url, sqs=sqs_server.sqs)
    done = Carried(checkpoint='{"step": 3}', first_message_id="first", continuation=9, run_s=601)
    sqs_server.task_manager(queue).submit_with(
        "stepper", {"key": "x", "total": 5, "step_s": 0.1}, message_attributes=done.attributes()
    )
    (message,) = receive_all(queue.queue)
    assert worker.process(message) == "timed_out"
    assert traces(trace_dir, "resumed", "x") == []  # never started
    assert "whole hard timeout of 600 s" in str(notify.errors[0])
    (dead,) = wait_for(lambda: receive_all(queue.dead_letter_queue), 10, "the dead letter")
    assert Carried.of(dead).run_s == 601


def slow_steps(key: str, *, context: TaskContext) -> None:
    """Steps longer than its run on one receive: it never saves a checkpoint."""
    apps._trace("run", key, continuation=context.continuation, run_total_s=context.run_total_s)
    time.sleep(30)


def test_a_resumable_run_that_ends_without_a_checkpoint_goes_on_and_its_hard_timeout_ends_it(
    sqs_server: Any, trace_dir: Path
) -> None:
    queue = sqs_server.make_queue()
    worker = Worker(continue_after_s=1, shutdown_grace_s=0.5, sqs_timeout=6)
    worker.register("slow", slow_steps, resumable=True, hard_timeout=4)
    worker.connect(queue.url, sqs=sqs_server.sqs)
    sqs_server.task_manager(queue).submit("slow", key="w")
    outcomes = []
    while not outcomes or outcomes[-1] == "continued":
        (message,) = wait_for(lambda: receive_all(queue.queue), 10, "the next message")
        outcomes.append(worker.process(message))
    # Each run carried its time on: the 4 s hard timeout ends it in a few runs.
    assert outcomes[-1] == "timed_out" and 2 <= outcomes.count("continued") <= 4, outcomes
    runs = traces(trace_dir, "run", "w")
    assert [run["continuation"] for run in runs] == list(range(len(runs)))
    assert all(b["run_total_s"] > a["run_total_s"] for a, b in zip(runs, runs[1:]))


def test_a_resumable_function_must_take_a_context() -> None:
    with pytest.raises(TypeError, match="keyword-only context"):
        Worker().register("r", apps.ok, resumable=True)


class OwnContext(apps.Echo):
    """A 0.0.11 handler with an attribute of its own named context (a property here)."""

    @property
    def context(self) -> str:
        return "mine"

    def run(self) -> None:
        apps._trace("context", "own", context=self.context)


def test_a_handler_with_its_own_context_keeps_it(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, caplog: Any
) -> None:
    worker = Worker({"own": OwnContext}, sqs_timeout=6, isolate=False)
    worker.connect(sqs_queue.url, sqs=sqs_server.sqs)
    sqs_server.task_manager(sqs_queue).submit("own")
    (message,) = receive_all(sqs_queue.queue)
    assert worker.process(message) == "done"
    assert traces(trace_dir, "context", "own")[0]["context"] == "mine"
    assert "attribute named context of its own" in caplog.text


def test_an_unreadable_checkpoint_is_reported_and_the_task_runs_from_its_start(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path
) -> None:
    notify = Recorder()
    worker = Worker(notify=notify, sqs_timeout=6)
    worker.register("stepper", apps.stepper, resumable=True, hard_timeout=60)
    worker.connect(sqs_queue.url, sqs=sqs_server.sqs)
    broken = {continuation.CHECKPOINT: {"DataType": "String", "StringValue": "{cut sho"}}
    sqs_server.task_manager(sqs_queue).submit_with(
        "stepper", {"key": "u", "total": 2, "step_s": 0.01}, message_attributes=broken
    )
    (message,) = receive_all(sqs_queue.queue)
    assert worker.process(message) == "done"
    assert "checkpoint attribute is no JSON" in str(notify.errors[0])
    assert traces(trace_dir, "resumed", "u")[0]["step"] == 0


def returns_when_asked(key: str, *, context: TaskContext) -> None:
    while not context.stop_requested:
        time.sleep(0.05)
    apps._trace("returned", key)


@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "signal-mode"])
def test_a_task_that_returns_on_a_warm_stop_without_a_checkpoint_is_handed_back(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, isolate: bool
) -> None:
    worker = Worker({"asked": returns_when_asked}, shutdown_grace_s=5, sqs_timeout=6)
    worker.isolate = isolate
    worker.connect(sqs_queue.url, sqs=sqs_server.sqs)
    sqs_server.task_manager(sqs_queue).submit("asked", key="h")
    (message,) = receive_all(sqs_queue.queue)
    # A warm stop half a second in, as SIGTERM makes: sent by a process of its own
    # (no thread may run here while the worker forks its task).
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: worker.request_stop())
    sender = subprocess.Popen(["sh", "-c", f"sleep 0.5; kill -USR1 {os.getpid()}"])
    try:
        started = time.monotonic()
        assert worker.process(message) == "handed_back"  # not done: its work is not finished
        assert time.monotonic() - started < 4  # it returned when asked, within the grace
    finally:
        sender.wait()
        signal.signal(signal.SIGUSR1, previous)
    assert traces(trace_dir, "returned", "h")
    (again,) = wait_for(lambda: receive_all(sqs_queue.queue), 10, "the message back")
    assert again.message_id == message.message_id and Carried.of(again).continuation == 0


def test_a_continuation_sqs_would_refuse_is_not_sent_and_the_message_is_retried_later(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path
) -> None:
    notify = Recorder()
    worker = Worker(continue_after_s=1, shutdown_grace_s=2, sqs_timeout=6, notify=notify)
    worker.register("stepper", apps.stepper, resumable=True, hard_timeout=60)
    worker.connect(sqs_queue.url, sqs=sqs_server.sqs)
    # Six attributes of its own and service_name: with the continuation's five, over ten.
    own = {f"mine{n}": {"DataType": "String", "StringValue": str(n)} for n in range(6)}
    sqs_server.task_manager(sqs_queue).submit_with(
        "stepper", {"key": "f", "total": 20, "step_s": 0.2}, message_attributes=own
    )
    worker.retry = RetryPolicy(first_s=1, factor=1, max_s=1, jitter="none")
    (message,) = receive_all(sqs_queue.queue)
    # Failed, retried after the retry delay (a refusal now is a refusal each time:
    # the redrive policy bounds it), never at once.
    assert worker.process(message) == "failed"
    assert "over SQS's 10" in str(notify.errors[0])
    assert receive_all(sqs_queue.queue, wait_s=0) == []
    (again,) = wait_for(lambda: receive_all(sqs_queue.queue), 10, "the message back")
    assert again.message_id == message.message_id  # not lost, not duplicated


# -- the handler class's view, FIFO --------------------------------------------------------


class Counting(MessageHandler):
    """A 0.0.11-style handler class that reads ``self.context``."""

    resumable = True

    def __init__(self, message, sqs_timeout, alarm_timeout, hard_timeout=60, **kwargs):
        super().__init__(message, sqs_timeout, alarm_timeout, hard_timeout)
        self.key = kwargs["key"]

    def run(self) -> None:
        count = (self.context.state or 0) if self.context is not None else -1
        while count < 6:
            if self.context.stop_requested:
                return
            time.sleep(0.25)
            count += 1
            apps._trace("count", self.key, count=count, group=self.context.continuation)
            self.context.checkpoint(count)

    def running(self) -> bool:
        return True

    def notify(self, exception: BaseException, context: Any = None) -> None: ...


def test_a_handler_class_reads_its_context_and_a_fifo_continuation_keeps_its_group(
    sqs_server: Any, trace_dir: Path
) -> None:
    queue = sqs_server.make_queue(fifo=True)
    worker = Worker({"counting": Counting}, continue_after_s=1, shutdown_grace_s=2, sqs_timeout=6)
    worker.connect(queue.url, sqs=sqs_server.sqs)
    sqs_server.task_manager(queue).submit_with(
        "counting", {"key": "c"}, message_group_id="g1", deduplication_id="first"
    )
    (message,) = receive_all(queue.queue)
    assert worker.process(message) == "continued"
    (follow,) = wait_for(lambda: receive_all(queue.queue), 10, "the continuation")
    assert follow.attributes["MessageGroupId"] == "g1"
    assert follow.attributes.get(
        "MessageDeduplicationId", deduplication_id(message.message_id, 1)
    ) == (deduplication_id(message.message_id, 1))
    assert worker.process(follow) == "done"
    counts = [trace["count"] for trace in traces(trace_dir, "count", "c")]
    assert counts == [1, 2, 3, 4, 5, 6]


def test_a_context_keyword_in_the_message_is_a_clear_failure(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path
) -> None:
    notify = Recorder()
    worker = Worker(
        {"refusals": refusals},
        notify=notify,
        sqs_timeout=6,
        isolate=False,
        retry=RetryPolicy(first_s=1, factor=1, max_s=1, jitter="none"),
    )
    worker.connect(sqs_queue.url, sqs=sqs_server.sqs)
    sqs_server.task_manager(sqs_queue).submit("refusals", key="c", context="mine")
    (message,) = receive_all(sqs_queue.queue)
    assert worker.process(message) == "failed"
    assert "kwarg named 'context'" in str(notify.errors[0])


# -- the wire and the shared memory ----------------------------------------------------


def test_what_a_continuation_carries_reads_back_and_bad_values_are_ignored() -> None:
    carried = Carried('{"a": [1, 2]}', "m-1", 3, 12.5, 1700000000.25)

    class Message:
        message_attributes = carried.attributes()

    assert Carried.of(Message()) == carried
    Message.message_attributes = {
        continuation.CHECKPOINT: {"DataType": "String", "StringValue": "{not json"},
        continuation.RUN_S: {"DataType": "Number", "StringValue": "nan"},
        continuation.CONTINUATION: {"DataType": "Number", "StringValue": "-2"},
    }
    assert Carried.of(Message()) == Carried()
    ids = {deduplication_id("m-1", n) for n in range(50)}
    assert len(ids) == 50 and all(len(i) <= 128 for i in ids)
    assert deduplication_id("m-1", 1) == deduplication_id("m-1", 1)


def test_a_checkpoint_cut_short_leaves_the_one_before_it() -> None:
    box = CheckpointBox()
    box.clear()
    assert box.read() == (0, None, False)
    box.write('{"step": 1}')
    box.write('{"step": 2}')
    assert box.read() == (2, '{"step": 2}', False)
    # A child killed while writing checkpoint 3: its slot holds half the bytes.
    slot = 64 + (3 % 2) * (16 + continuation.MAX_CHECKPOINT_BYTES)
    box._memory[slot + 16 : slot + 20] = b'{"st'
    assert box.read()[1] == '{"step": 2}'
    box.set_stop(True)
    assert box.stop_requested() and box.read()[2] is True
    box.clear()
    assert box.read() == (0, None, False) and not box.stop_requested()
