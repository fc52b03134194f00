"""The intake's corners: the 12 hours count from each receive, a wait is never a failure,
a LocalQueue loses nothing under prefetch, a FIFO group keeps its order under prefetch.

Messages are real (received from the test server through a TaskManager); a
message's age is set in the data SQS sends with it (its
``ApproximateFirstReceiveTimestamp``) or in the receive time the TaskManager
kept with it, never by replacing our code.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from sqstaskmaster.errors import VisibilityBudgetError
from sqstaskmaster.local import LocalQueue
from sqstaskmaster.message_handler import MessageHandler
from sqstaskmaster.sqs.facts import (
    MAX_VISIBILITY_S,
    RECEIVED_AT_ATTRIBUTE,
    budget_left_s,
)
from sqstaskmaster.task_manager import TaskManager
from sqstaskmaster.worker.batching import Waiting
from sqstaskmaster.worker.intake import Intake
from sqstaskmaster.worker.loop import Worker
from sqstaskmaster.worker.retry import RetryPolicy
from sqstaskmaster.worker.settlement import Settlement

HOUR_S = 3600


class Recorder:
    def __init__(self) -> None:
        self.errors: List[BaseException] = []

    def __call__(self, exception: BaseException, context: Optional[dict] = None) -> None:
        self.errors.append(exception)


def first_received_long_ago(message: Any, hours: float) -> Any:
    """As SQS dates a message first received ``hours`` ago (delivered again now)."""
    first_ms = int((time.time() - hours * HOUR_S) * 1000)
    message.meta.data["Attributes"]["ApproximateFirstReceiveTimestamp"] = str(first_ms)
    return message


def waited(message: Any, left_s: float) -> Any:
    """As if this copy waited in the worker until ``left_s`` of its receive's 12 hours are left.

    Its first receive is dated as long ago (a first receive is never later).
    """
    received_at = time.time() - (MAX_VISIBILITY_S - left_s)
    setattr(message, RECEIVED_AT_ATTRIBUTE, received_at)
    message.meta.data["Attributes"]["ApproximateFirstReceiveTimestamp"] = str(
        int(received_at * 1000)
    )
    return message


def receive(manager: TaskManager, count: int, sqs_timeout: int = 30) -> List[Any]:
    messages: List[Any] = []
    deadline = time.monotonic() + 10
    while len(messages) < count and time.monotonic() < deadline:
        messages += manager.receive(
            1, sqs_timeout, message_attributes=True, max_messages=count - len(messages)
        )
    assert len(messages) == count
    return messages


def ok(**_: Any) -> None:
    pass


def make_worker(sqs_server: Any, queue: Any, **settings: Any) -> Any:
    notify = Recorder()
    worker = Worker({"ok": ok}, notify=notify, isolate=False, poll_wait_s=0, **settings)
    manager = worker.connect(queue.url, sqs=sqs_server.sqs)
    return worker, manager, notify


def visible_within(sqs_server: Any, queue: Any, seconds: float) -> int:
    """How many messages of ``queue`` a second consumer receives within ``seconds``."""
    client = sqs_server.sqs.meta.client
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = client.receive_message(
            QueueUrl=queue.url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=0
        ).get("Messages", [])
        if found:
            return len(found)
    return 0


# -- item 1: 12 hours from each receive ------------------------------------------------


def test_the_budget_counts_from_the_receive_not_the_first_one(sqs_server: Any) -> None:
    # Given a message first received 13 hours ago and delivered again now
    queue = sqs_server.make_queue()
    manager = sqs_server.task_manager(queue)
    manager.submit("ok")
    before = time.time()
    [message] = receive(manager, 1)
    first_received_long_ago(message, 13)
    # Then nearly all of the 12 hours are left: counted from the clock before this receive
    left = budget_left_s(message)
    assert left is not None
    assert MAX_VISIBILITY_S - 60 < left <= MAX_VISIBILITY_S - (time.time() - before) + 1


def test_a_message_first_received_13_hours_ago_runs_on_its_new_receive(
    sqs_server: Any,
) -> None:
    # Given a worker with a 4-hour hard timeout and a message first received 13 hours ago
    queue = sqs_server.make_queue()
    worker, manager, notify = make_worker(sqs_server, queue, hard_timeout=4 * HOUR_S)
    manager.submit("ok")
    [message] = receive(manager, 1)
    # When the worker gets this new copy, then it runs it: done, deleted, nothing notified
    assert worker.process(first_received_long_ago(message, 13)) == "done"
    assert notify.errors == []
    assert visible_within(sqs_server, queue, 2) == 0


def test_a_waiting_message_first_received_long_ago_is_kept_and_run(sqs_server: Any) -> None:
    # Given a prefetched message, first received 13 hours ago, waiting its turn
    queue = sqs_server.make_queue()
    manager = sqs_server.task_manager(queue)
    manager.submit("ok")
    [message] = receive(manager, 1)
    notify = Recorder()
    waiting = Waiting(30, 10, notify)
    waiting.add([first_received_long_ago(message, 13)], time.monotonic())
    # When its heartbeat comes, then SQS is asked for the full 30 s and it is run
    waiting.extend()
    assert waiting.requests == 1 and notify.errors == []
    taken = waiting.take()
    assert taken is not None and taken[0] is message


# -- item 2: a wait is handed back, never refused --------------------------------------


def test_a_message_whose_wait_ate_its_budget_is_handed_back_not_refused(
    sqs_server: Any,
) -> None:
    # Given a task with a 600 s hard timeout, and a message that waited in the worker
    # until only 100 s of its receive's 12 hours are left
    queue = sqs_server.make_queue(dead_letter=True, max_receive_count=2)
    retry = RetryPolicy(first_s=3600, jitter="none")
    worker, manager, notify = make_worker(sqs_server, queue, hard_timeout=600, retry=retry)
    manager.submit("ok")
    [message] = receive(manager, 1)
    # When the worker takes it, then it is handed back: visible again at once, no
    # notify, no failure, no refusal, not run
    assert worker.process(waited(message, 100)) == "handed_back"
    assert notify.errors == []
    assert visible_within(sqs_server, queue, 3) == 1


class NeverFits(MessageHandler):
    """A handler whose own hard timeout no receive's 12 hours can hold."""

    def __init__(self, message: Any, sqs_timeout: int, alarm_timeout: int, **_: Any) -> None:
        super().__init__(message, sqs_timeout, alarm_timeout, MAX_VISIBILITY_S)

    def run(self) -> None:
        raise AssertionError("never runs")

    def running(self) -> bool:
        return True

    def notify(self, exception: BaseException, context: Optional[dict] = None) -> None:
        pass


def test_a_hard_timeout_no_receive_can_hold_is_still_refused(sqs_server: Any) -> None:
    # Given a handler whose hard timeout is longer than a fresh receive's 12 hours
    queue = sqs_server.make_queue()
    worker, manager, notify = make_worker(sqs_server, queue)
    worker.register("never_fits", NeverFits)
    manager.submit("never_fits")
    [message] = receive(manager, 1)
    # When the worker gets it just after its receive, then it is refused and notified
    assert worker.process(message) == "refused"
    assert [type(error) for error in notify.errors] == [VisibilityBudgetError]
    assert "from the receive that delivered the message" in str(notify.errors[0])


# -- item 3: LocalQueue with prefetch --------------------------------------------------


def nap(key: str, seconds: float, ran: List[str]) -> None:
    time.sleep(seconds)
    ran.append(key)


def test_a_local_queue_with_prefetch_runs_every_message() -> None:
    # Given a LocalQueue holding 1, 2, 3, each a task longer than the visibility timeout
    url = f"local-{uuid.uuid4().hex}"
    producer = TaskManager(url, queue_constructor=LocalQueue)
    ran: List[str] = []
    for key in ("1", "2", "3"):
        # Each waits 2.2 s or more behind the one before: past what is left of a
        # 3 s visibility less the 1 s margin a waiting message must have to run.
        producer.submit("nap", key=key, seconds=2.2)
    notify = Recorder()
    worker = Worker(
        {"nap": lambda key, seconds: nap(key, seconds, ran)},
        notify=notify,
        isolate=False,
        prefetch=10,
        sqs_timeout=3,
        alarm_timeout=1,
        hard_timeout=30,
        poll_wait_s=0,
        burst_idle_s=1,
        burst_tasks=3,
    )
    worker.queue_url = url
    worker._task_manager = TaskManager(url, queue_constructor=LocalQueue, notify=notify)
    # When a worker with prefetch consumes it, then all three run, in order
    assert worker.run_single() == 0
    assert ran == ["1", "2", "3"]
    assert notify.errors == []
    assert LocalQueue(url).queue.qsize() == 0


def polled_local_intake(prefetch: int) -> Tuple[str, Intake]:
    """A worker's intake that polled one task from a new LocalQueue (and its URL)."""
    url = f"local-{uuid.uuid4().hex}"
    manager = TaskManager(url, queue_constructor=LocalQueue)
    manager.submit("ok", key="1")
    intake = Intake(manager, prefetch=prefetch, sqs_timeout=30, heartbeat_s=10, notify=Recorder())
    assert intake.poll(0) == 1
    return url, intake


def test_a_local_message_still_waiting_at_a_stop_goes_back_in_its_queue() -> None:
    # Given a worker's intake that polled a LocalQueue and still holds its message
    url, intake = polled_local_intake(prefetch=10)
    # When the worker stops before taking it, then it is back in the queue
    intake.close("the worker is stopping")
    assert LocalQueue(url).queue.qsize() == 1


# -- item 7: FIFO order under prefetch -------------------------------------------------


def trace(directory: str, key: str) -> None:
    path = Path(directory) / f"{time.monotonic_ns()}.{key}.{os.getpid()}"
    path.write_text(key)


def fail_first(directory: str, key: str) -> None:
    """Fails on its first run only (a marker file remembers it)."""
    trace(directory, key)
    marker = Path(directory) / f"failed.{key}"
    if not marker.exists():
        marker.touch()
        raise RuntimeError(f"{key} fails its first run on purpose")


def runs(directory: Path) -> List[str]:
    names = [path.name for path in directory.iterdir() if not path.name.startswith("failed.")]
    return [name.split(".")[1] for name in sorted(names, key=lambda n: int(n.split(".")[0]))]


def submit_group(manager: TaskManager, group: str, items: List[Any]) -> None:
    for task, kwargs in items:
        manager.submit_with(task, kwargs, message_group_id=group, deduplication_id=uuid.uuid4().hex)


@pytest.mark.parametrize("isolate", [False, True], ids=["signal-mode", "isolated"])
def test_a_fifo_group_runs_in_order_after_a_failure_under_prefetch(
    sqs_server: Any, tmp_path: Path, isolate: bool
) -> None:
    # Given a FIFO queue with group A (a1 fails its first run, then a2, a3) and
    # group B (b1, b2), all received by one poll of a worker with prefetch 10
    queue = sqs_server.make_queue(fifo=True)
    manager = sqs_server.task_manager(queue)
    where = {"directory": str(tmp_path)}
    submit_group(manager, "A", [("fail_first", {**where, "key": k}) for k in ("a1", "a2", "a3")])
    submit_group(manager, "B", [("trace", {**where, "key": k}) for k in ("b1", "b2")])
    # (a2 and a3 fail nothing: their marker files exist before they run)
    for key in ("a2", "a3"):
        (tmp_path / f"failed.{key}").touch()
    notify = Recorder()
    worker = Worker(
        {"fail_first": fail_first, "trace": trace},
        notify=notify,
        isolate=isolate,
        prefetch=10,
        poll_wait_s=1,
        burst_idle_s=4,
        # No retry delay: moto and LocalStack both keep a group's order only then
        # (see test_a_fifo_groups_waiting_messages_come_back_when_the_failed_one_does).
        retry=RetryPolicy(first_s=0, factor=1, max_s=0, jitter="none"),
    )
    worker.connect(queue.url, sqs=sqs_server.sqs)
    # When it runs until the queue is empty
    assert worker.run_single() == 0
    # Then group A ran a1, a1, a2, a3 (never a2 before the retried a1); B in order
    order = runs(tmp_path)
    assert [key for key in order if key.startswith("a")] == ["a1", "a1", "a2", "a3"], order
    assert [key for key in order if key.startswith("b")] == ["b1", "b2"], order
    assert len(notify.errors) == 1  # a1's failure, nothing else
    assert visible_within(sqs_server, queue, 2) == 0  # nothing lost, nothing left


def fail_twice(directory: str, key: str) -> None:
    """Fails on its first two runs (marker files count them)."""
    trace(directory, key)
    for number in (1, 2):
        marker = Path(directory) / f"failed.{key}.{number}"
        if not marker.exists():
            marker.touch()
            raise RuntimeError(f"{key} fails run {number} on purpose")


def test_a_retried_fifo_message_does_not_spend_its_followers_receives(
    sqs_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a FIFO group a1 (fails twice), a2, a3, received by one poll with prefetch 10
    queue = sqs_server.make_queue(fifo=True)
    manager = sqs_server.task_manager(queue)
    where = {"directory": str(tmp_path)}
    submit_group(
        manager,
        "A",
        [("fail_twice", {**where, "key": "a1"})]
        + [("trace", {**where, "key": key}) for key in ("a2", "a3")],
    )
    worker = Worker(
        {"fail_twice": fail_twice, "trace": trace},
        notify=Recorder(),
        isolate=False,
        prefetch=10,
        poll_wait_s=1,
        burst_idle_s=3,
        retry=RetryPolicy(first_s=0, factor=1, max_s=0, jitter="none"),
    )
    worker.connect(queue.url, sqs=sqs_server.sqs)
    caplog.set_level(logging.INFO, logger="sqstaskmaster.worker.attempt")
    # When it runs until the queue is empty
    assert worker.run_single() == 0
    # Then the group ran in order, and a2 and a3 were received twice (with a1's
    # first run, then after it), not once more with each retry of a1: a redrive
    # policy counts every receive
    assert runs(tmp_path) == ["a1", "a1", "a1", "a2", "a3"]
    counts = [
        record.args[2]
        for record in caplog.records
        if record.msg == "task %s message %s receive %d: started" and record.args[0] == "trace"
    ]
    assert counts == [2, 2], counts


def test_a_fifo_groups_waiting_messages_come_back_when_the_failed_one_does(
    sqs_server: Any, tmp_path: Path
) -> None:
    # Given a FIFO group a1 (fails), a2, a3, received by one poll, and a 7 s retry delay
    queue = sqs_server.make_queue(fifo=True)
    manager = sqs_server.task_manager(queue)
    where = {"directory": str(tmp_path)}
    submit_group(manager, "A", [("fail_first", {**where, "key": k}) for k in ("a1", "a2", "a3")])
    for key in ("a2", "a3"):
        (tmp_path / f"failed.{key}").touch()
    sqs = sqs_server.session.resource("sqs", endpoint_url=sqs_server.endpoint_url)
    sent: List[Dict[str, Any]] = []
    sqs.meta.client.meta.events.register(
        "before-parameter-build.sqs.ChangeMessageVisibilityBatch",
        lambda params, **_: sent.append(params),
    )
    worker = Worker(
        {"fail_first": fail_first},
        notify=Recorder(),
        isolate=False,
        prefetch=10,
        poll_wait_s=1,
        burst_idle_s=2,
        retry=RetryPolicy(first_s=7, factor=1, max_s=7, jitter="none"),
    )
    worker.connect(queue.url, sqs=sqs)
    # When a1 fails, then a2 and a3 are handed back in one request, visible again
    # when a1 is (7 s): SQS keeps the group blocked meanwhile, and an emulator
    # that does not cannot deliver them before a1
    assert worker.run_single() == 0
    assert runs(tmp_path) == ["a1"]
    [request] = sent
    assert [entry["VisibilityTimeout"] for entry in request["Entries"]] == [7, 7]


def test_a_lapsed_message_takes_its_fifo_group_back_with_it(sqs_server: Any) -> None:
    # Given a1 (lapsed while it waited), then a2 of the same group and b1, waiting
    queue = sqs_server.make_queue(fifo=True)
    manager = sqs_server.task_manager(queue)
    submit_group(manager, "A", [("ok", {"key": "a1"}), ("ok", {"key": "a2"})])
    submit_group(manager, "B", [("ok", {"key": "b1"})])
    messages = receive(manager, 3)
    by_key: Dict[str, Any] = {json.loads(m.body)["kwargs"]["key"]: m for m in messages}
    sent: List[Dict[str, Any]] = []
    client = sqs_server.sqs.meta.client
    event = "before-parameter-build.sqs.ChangeMessageVisibilityBatch"

    def seen(params: Dict[str, Any], **_: Any) -> None:
        sent.append(params)

    waiting = Waiting(30, 10, Recorder())
    waiting.add([by_key["a1"]], time.monotonic() - 60)  # its 30 s ran out long ago
    waiting.add([by_key["a2"], by_key["b1"]], time.monotonic())
    client.meta.events.register(event, seen)
    try:
        # When the next message is taken
        taken = waiting.take()
    finally:
        client.meta.events.unregister(event, seen)
    # Then a1 is not run, a2 is handed back (one request), and b1 runs
    assert taken is not None and taken[0] is by_key["b1"]
    assert len(sent) == 1
    entries = sent[0]["Entries"]
    assert [e["ReceiptHandle"] for e in entries] == [by_key["a2"].receipt_handle]
    assert entries[0]["VisibilityTimeout"] == 0
    assert len(waiting) == 0


def test_a_running_local_message_handed_back_goes_back_in_its_queue() -> None:
    # Given a worker settling a LocalQueue message through the queue it polls
    url, intake = polled_local_intake(prefetch=1)
    taken = intake.take()
    assert taken is not None
    message = taken[0]
    settlement = Settlement(Recorder())
    settlement.queue = intake.queue
    # When a stop hands the running task's message back, then it is in the queue again
    settlement.hand_back(message, "ok", "stopped by shutdown")
    assert LocalQueue(url).queue.qsize() == 1
    # while a retry delay changes nothing in a local queue (as 0.0.11's LocalMessage)
    settlement.retry_at(LocalQueue(url).queue.get_nowait(), "ok", 1, 5)
    assert LocalQueue(url).queue.qsize() == 0
