"""Batched deletes and waiting messages' heartbeats: retries, reports, the 12-hour cap, timing.

Messages are real (received from moto's server); SQS faults a server cannot
be made to produce come from botocore's Stubber on the same client.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any, Dict, List, Optional

import pytest
from botocore.stub import ANY, Stubber

from sqstaskmaster.errors import BatchEntryError
from sqstaskmaster.run.timer import SignalTimer
from sqstaskmaster.sqs.facts import mark_received
from sqstaskmaster.worker.batching import FLUSH_AFTER_S, Chores, DeleteBatch, Waiting


class Recorder:
    def __init__(self) -> None:
        self.errors: List[BaseException] = []
        self.contexts: List[Optional[Dict[str, Any]]] = []

    def __call__(self, exception: BaseException, context: Optional[dict] = None) -> None:
        self.errors.append(exception)
        self.contexts.append(context)


def received(sqs_server: Any, count: int) -> List[Any]:
    queue = sqs_server.make_queue()
    sqs_server.task_manager(queue).submit_batch([("noop", {})] * count)
    # A resource of its own: a Stubber on its client touches no other test.
    sqs = sqs_server.session.resource("sqs", endpoint_url=sqs_server.endpoint_url)
    messages: List[Any] = []
    while len(messages) < count:
        messages += sqs.Queue(queue.url).receive_messages(
            AttributeNames=["All"], MaxNumberOfMessages=10, VisibilityTimeout=30
        )
    return messages


def expect_delete(stubber: Stubber, failed: List[Dict[str, Any]], entries: int) -> None:
    stubber.add_response(
        "delete_message_batch",
        {"Successful": [], "Failed": failed},
        {"QueueUrl": ANY, "Entries": [ANY] * entries},
    )


def failure(index: int, code: str = "InternalError") -> Dict[str, Any]:
    return {"Id": str(index), "SenderFault": False, "Code": code, "Message": "try later"}


def test_a_failed_entry_is_tried_again_and_not_reported_once_it_succeeds(
    sqs_server: Any,
) -> None:
    messages = received(sqs_server, 3)
    notify = Recorder()
    batch = DeleteBatch(notify)
    for message in messages:
        batch.add(message, "noop")
    with Stubber(messages[0].meta.client) as stubber:
        expect_delete(stubber, [failure(1)], 3)
        expect_delete(stubber, [], 1)  # only the failed one again
        batch.flush()
        stubber.assert_no_pending_responses()
    assert notify.errors == []
    assert len(batch) == 0


def test_an_entry_that_keeps_failing_is_reported_with_its_task_and_message_id(
    sqs_server: Any, caplog: Any
) -> None:
    [message] = received(sqs_server, 1)
    notify = Recorder()
    batch = DeleteBatch(notify)
    batch.add(message, "resize")
    with Stubber(message.meta.client) as stubber, caplog.at_level(logging.ERROR):
        for _ in range(3):
            expect_delete(stubber, [failure(0)], 1)
        batch.flush()
        stubber.assert_no_pending_responses()
    [error] = notify.errors
    assert isinstance(error, BatchEntryError)
    assert (error.message_id, error.task, error.code) == (
        message.message_id,
        "resize",
        "InternalError",
    )
    assert notify.contexts[0] is not None and notify.contexts[0]["body"] == message.body
    [line] = [
        r.getMessage() for r in caplog.records if "DeleteMessageBatch failed" in r.getMessage()
    ]
    assert f"task resize message {message.message_id}" in line
    assert "after 3 tries" in line and "runs again" in line
    assert len(batch) == 0  # reported, not kept forever


def test_a_stale_receipt_handle_is_reported_without_retrying(sqs_server: Any) -> None:
    messages = received(sqs_server, 2)
    notify = Recorder()
    batch = DeleteBatch(notify)
    for message in messages:
        batch.add(message, "noop")
    with Stubber(messages[0].meta.client) as stubber:
        expect_delete(stubber, [failure(0, "ReceiptHandleIsInvalid")], 2)
        batch.flush()
        stubber.assert_no_pending_responses()
    assert [error.code for error in notify.errors] == ["ReceiptHandleIsInvalid"]  # type: ignore[attr-defined]


def test_a_request_that_fails_is_tried_again_then_every_entry_is_reported(
    sqs_server: Any,
) -> None:
    messages = received(sqs_server, 2)
    notify = Recorder()
    batch = DeleteBatch(notify)
    for message in messages:
        batch.add(message, "noop")
    with Stubber(messages[0].meta.client) as stubber:
        for _ in range(3):
            stubber.add_client_error(
                "delete_message_batch", "ServiceUnavailable", http_status_code=503
            )
        batch.flush()
        stubber.assert_no_pending_responses()
    assert len(notify.errors) == 2
    assert {error.message_id for error in notify.errors} == {m.message_id for m in messages}  # type: ignore[attr-defined]


def test_deletes_go_ten_to_a_request_and_really_delete(sqs_server: Any) -> None:
    messages = received(sqs_server, 12)
    batch = DeleteBatch(Recorder())
    for message in messages:
        batch.add(message, "noop")
    assert batch.due_at() is not None and batch.due_at() <= time.monotonic()  # 10 or more: now
    batch.flush()
    assert batch.requests == 2
    url = messages[0].queue_url
    attributes = messages[0].meta.client.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_a_delete_falls_due_within_the_flush_bound(sqs_server: Any) -> None:
    [message] = received(sqs_server, 1)
    batch = DeleteBatch(Recorder())
    assert batch.due_at() is None
    before = time.monotonic()
    batch.add(message, "noop")
    due = batch.due_at()
    assert due is not None and before + FLUSH_AFTER_S <= due <= time.monotonic() + FLUSH_AFTER_S
    chores = Chores(batch, Waiting(30, 10, Recorder()), Recorder())
    chores.run_due()  # not due yet
    assert len(batch) == 1
    time.sleep(FLUSH_AFTER_S)
    chores.run_due()
    assert len(batch) == 0


def test_waiting_heartbeats_never_ask_past_the_12_hour_budget(sqs_server: Any) -> None:
    messages = received(sqs_server, 2)
    # The first was received 12 hours minus 20 s ago: 20 s are left.
    mark_received(messages[:1], time.time() - 12 * 3600 + 20)
    waiting = Waiting(30, 10, Recorder())
    waiting.add(messages, time.monotonic())
    asked: List[Dict[str, Any]] = []
    client = messages[0].meta.client

    def seen(params: Dict[str, Any], **_: Any) -> None:
        asked.extend(params["Entries"])

    client.meta.events.register("before-parameter-build.sqs.ChangeMessageVisibilityBatch", seen)
    try:
        waiting.extend()
    finally:
        client.meta.events.unregister(
            "before-parameter-build.sqs.ChangeMessageVisibilityBatch", seen
        )
    assert sorted(entry["VisibilityTimeout"] for entry in asked) in ([19, 30], [20, 30])
    assert waiting.due_at() is not None and waiting.due_at() > time.monotonic() + 9


def test_a_signal_mode_timer_runs_due_chores_in_the_main_thread_one_at_a_time() -> None:
    calls: List[str] = []
    depth = [0, 0]  # current, deepest
    due = [time.monotonic() + 0.05]

    def chore_at() -> Optional[float]:
        return due[0] if len(calls) < 3 else None

    def on_chore() -> None:
        depth[0] += 1
        depth[1] = max(depth)
        calls.append(threading.current_thread().name)
        end = time.monotonic() + 0.05  # a firing that lands now must not start another
        while time.monotonic() < end:
            pass
        due[0] = time.monotonic() - 1  # still due: the timer must not nest
        depth[0] -= 1

    # Heartbeats every 10 ms: some land while a chore runs, and must not start another.
    timer = SignalTimer(
        0.01,
        time.monotonic() + 60,
        lambda: None,
        lambda: None,
        chore_at=chore_at,
        on_chore=on_chore,
    )
    before = signal.getsignal(signal.SIGALRM)
    timer.start()
    try:
        end = time.monotonic() + 2
        while len(calls) < 3 and time.monotonic() < end:
            pass
    finally:
        timer.stop()
    assert calls == ["MainThread"] * 3
    assert depth[1] == 1
    assert signal.getsignal(signal.SIGALRM) == before


def test_chores_report_an_error_and_never_raise_it(sqs_server: Any) -> None:
    [message] = received(sqs_server, 1)
    notify = Recorder()
    batch = DeleteBatch(notify)
    batch.add(message, "noop")

    def broken() -> None:
        raise RuntimeError("no")

    batch.flush = broken  # type: ignore[method-assign]
    chores = Chores(batch, Waiting(30, 10, notify), notify)
    chores.flush()
    [error] = notify.errors
    assert isinstance(error, RuntimeError)


@pytest.mark.parametrize("count", [3, 12])
def test_every_waiting_message_is_handed_back(sqs_server: Any, count: int) -> None:
    messages = received(sqs_server, count)
    waiting = Waiting(30, 10, Recorder())
    waiting.add(messages, time.monotonic())
    handed = waiting.hand_back_all("stopping")
    assert len(handed) == count and len(waiting) == 0
    assert waiting.requests == (1 if count <= 10 else 2)
    url = messages[0].queue_url
    again = (
        messages[0]
        .meta.client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)
        .get("Messages", [])
    )
    assert len(again) == min(count, 10)


def test_a_waiting_message_sqs_refused_to_extend_is_neither_run_nor_handed_back(
    sqs_server: Any, caplog: Any
) -> None:
    messages = received(sqs_server, 2)
    notify = Recorder()
    waiting = Waiting(30, 10, notify)
    waiting.add(messages, time.monotonic())
    with Stubber(messages[0].meta.client) as stubber:
        stubber.add_response(
            "change_message_visibility_batch",
            {
                "Successful": [{"Id": "1"}],
                "Failed": [failure(0, "MessageNotInflight")],
            },
            {"QueueUrl": ANY, "Entries": [ANY, ANY]},
        )
        waiting.extend()
        stubber.assert_no_pending_responses()
    assert [error.code for error in notify.errors] == ["MessageNotInflight"]  # type: ignore[attr-defined]
    # Only the one still ours is run; the other is SQS's again.
    taken = waiting.take()
    assert taken is not None and taken[0] is messages[1]
    waiting.add([messages[1]], time.monotonic())
    with caplog.at_level(logging.WARNING):
        assert waiting.take() is not None
        assert waiting.take() is None


def test_a_waiting_message_whose_visibility_ran_out_is_not_run(sqs_server: Any) -> None:
    messages = received(sqs_server, 2)
    waiting = Waiting(30, 10, Recorder())
    waiting.add(messages[:1], time.monotonic() - 30)  # received 30 s ago, never extended
    waiting.add(messages[1:], time.monotonic())
    taken = waiting.take()
    assert taken is not None and taken[0] is messages[1]
    waiting.add(messages[:1], time.monotonic() - 30.5)  # ran out 0.5 s ago
    assert waiting.hand_back_all("stopping") == messages[:1]
    assert waiting.requests == 0  # not ours to hand back


def test_a_slow_chore_never_delays_a_signal_mode_hard_timeout() -> None:
    from sqstaskmaster.errors import HardTimeoutError
    from sqstaskmaster.local import LocalMessage
    from sqstaskmaster.message_handler import MessageHandler
    from sqstaskmaster.run.strategies import InProcess

    class SlowChores:
        def __init__(self) -> None:
            self.runs = 0
            self.due = time.monotonic() + 0.1

        def due_at(self) -> Optional[float]:
            return self.due if self.runs == 0 else None

        def run_due(self) -> None:
            self.runs += 1
            time.sleep(3)  # a flush stuck on a slow SQS

    class Spin(MessageHandler):
        def run(self) -> None:
            while True:
                pass

        def running(self) -> bool:
            return True

        def notify(self, exception: BaseException, context: Optional[dict] = None) -> None:
            pass

    chores = SlowChores()
    handler = Spin(LocalMessage("{}", {}, {}), sqs_timeout=30, alarm_timeout=10, hard_timeout=1)
    handler.execution = InProcess().with_stop(None, chores)
    started = time.monotonic()
    with handler:
        handler.run()
    took = time.monotonic() - started
    assert isinstance(handler.error, HardTimeoutError)
    assert chores.runs == 1
    # The body was stopped at its deadline, while the chore's 3 s ran beside it;
    # leaving waits up to 2 s for the chore, so its thread does not outlive the task.
    assert handler.error.elapsed is not None and handler.error.elapsed < 1.3
    assert took < 3.5


def test_a_failed_delete_goes_to_the_handlers_notify(sqs_server: Any) -> None:
    [message] = received(sqs_server, 1)
    batch_notify, handler_notify = Recorder(), Recorder()
    batch = DeleteBatch(batch_notify)
    batch.add(message, "noop", handler_notify)
    with Stubber(message.meta.client) as stubber:
        expect_delete(stubber, [failure(0, "ReceiptHandleIsInvalid")], 1)
        batch.flush()
    assert len(handler_notify.errors) == 1 and batch_notify.errors == []


def test_a_stop_seen_after_the_chores_starts_no_task(sqs_server: Any) -> None:
    from sqstaskmaster.worker.intake import Intake

    messages = received(sqs_server, 1)
    intake = Intake(None, prefetch=10, sqs_timeout=30, heartbeat_s=10, notify=Recorder())
    intake.waiting.add(messages, time.monotonic())

    class Stopping:
        stopping = True

    assert intake.take(Stopping()) is None
    assert len(intake.waiting) == 1  # still waiting: handed back when the worker stops
    taken = intake.take()
    assert taken is not None and taken[0] is messages[0]
