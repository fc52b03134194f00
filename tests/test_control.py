"""Tasks steer their own message: Retry(delay_s), Reject and a task's throws=(...).

Each runs in both execution strategies (an isolated child reports them to the
parent as JSON), on moto's server; dead-lettering uses a real redrive policy.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, List, Optional

import pytest

from sqstaskmaster.errors import Reject, Retry, TaskControl
from sqstaskmaster.sqs.facts import mark_received
from sqstaskmaster.worker.loop import Worker
from sqstaskmaster.worker.retry import RetryPolicy
from sqstaskmaster.worker.settlement import Outcome, Settlement

MODES = pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "signal-mode"])


class Recorder:
    def __init__(self) -> None:
        self.errors: List[BaseException] = []

    def __call__(self, exception: BaseException, context: Optional[dict] = None) -> None:
        self.errors.append(exception)


def retries_in_two(key: str) -> None:
    raise Retry(2, reason=f"{key}: the upstream is busy")


def rejects(key: str) -> None:
    raise Reject(f"{key} can never succeed")


def raises_key_error(key: str) -> None:
    raise KeyError(key)


def make_worker(sqs_server: Any, queue: Any, isolate: bool) -> tuple[Worker, Recorder]:
    notify = Recorder()
    worker = Worker(
        {"retry": retries_in_two, "reject": rejects},
        sqs_timeout=6,
        isolate=isolate,
        notify=notify,
        retry=RetryPolicy(first_s=1, factor=1, max_s=1, jitter="none"),
    )
    worker.register("strict", raises_key_error, throws=(KeyError,))
    worker.connect(queue.url, sqs=sqs_server.sqs)
    return worker, notify


def poll(queue: Any, timeout_s: float = 5.0, visibility: int = 30) -> List[Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        messages = queue.receive_messages(
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
            MaxNumberOfMessages=1,
            WaitTimeSeconds=0,
            VisibilityTimeout=visibility,
        )
        if messages or time.monotonic() >= deadline:
            return messages
        time.sleep(0.05)


def wait_until(predicate: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout_s} s")


def depth(sqs_server: Any, url: str) -> int:
    attributes = sqs_server.client.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


@MODES
def test_retry_sets_the_next_delivery_and_is_not_notified(
    sqs_server: Any, sqs_queue: Any, isolate: bool, caplog: Any
) -> None:
    worker, notify = make_worker(sqs_server, sqs_queue, isolate)
    sqs_server.task_manager(sqs_queue).submit("retry", key="r1")
    caplog.set_level(logging.INFO)
    [message] = poll(sqs_queue.queue)
    started = time.monotonic()
    assert worker.process(message) == Outcome.RETRIED_BY_TASK
    assert notify.errors == []
    assert "visible again in 2 s" in caplog.text
    assert poll(sqs_queue.queue, timeout_s=1.0) == []  # still invisible after 1 s
    again = poll(sqs_queue.queue, timeout_s=5.0)
    assert again and 1.5 <= time.monotonic() - started <= 6.0
    assert again[0].attributes["ApproximateReceiveCount"] == "2"


def test_retry_delay_is_capped_by_the_12_hour_budget(sqs_server: Any, sqs_queue: Any) -> None:
    sqs_server.task_manager(sqs_queue).submit("retry", key="r2")
    [message] = poll(sqs_queue.queue)
    # Given a message received 11 hours ago (the receive time kept with it)
    mark_received([message], time.time() - 11 * 3600)
    # When its task asks for a day's delay, then it gets what the budget has left
    delay = Settlement(Recorder()).retry_at(message, "retry", 1, 24 * 3600)
    assert 3590 <= delay <= 3600


@MODES
def test_reject_dead_letters_at_once_with_body_and_attributes(
    sqs_server: Any, isolate: bool
) -> None:
    queue = sqs_server.make_queue(dead_letter=True, max_receive_count=5)
    worker, notify = make_worker(sqs_server, queue, isolate)
    sqs_server.task_manager(queue, sender_name="producer-1").submit("reject", key="j1")
    [message] = poll(queue.queue)
    assert worker.process(message) == Outcome.REJECTED
    assert [type(error) for error in notify.errors] == [Reject]
    assert depth(sqs_server, queue.url) == 0
    [copied] = poll(queue.dead_letter_queue)
    assert json.loads(copied.body) == {"task": "reject", "kwargs": {"key": "j1"}}
    assert copied.message_attributes["service_name"]["StringValue"] == "producer-1"


@MODES
def test_a_tasks_throws_mark_a_permanent_failure(sqs_server: Any, isolate: bool) -> None:
    queue = sqs_server.make_queue(dead_letter=True, max_receive_count=5)
    worker, notify = make_worker(sqs_server, queue, isolate)
    sqs_server.task_manager(queue).submit("strict", key="k1")
    [message] = poll(queue.queue)
    assert worker.process(message) == Outcome.REJECTED
    assert depth(sqs_server, queue.url) == 0
    assert wait_until(lambda: depth(sqs_server, queue.dead_letter_url) == 1, 5)
    assert len(notify.errors) == 1 and "k1" in str(notify.errors[0])
    # notify sees the task's own exception type, isolated or not
    assert isinstance(notify.errors[0], KeyError), type(notify.errors[0]).__mro__


def test_reject_without_a_redrive_policy_takes_the_retry_path(
    sqs_server: Any, sqs_queue: Any, caplog: Any
) -> None:
    worker, _ = make_worker(sqs_server, sqs_queue, isolate=False)
    sqs_server.task_manager(sqs_queue).submit("reject", key="j2")
    [message] = poll(sqs_queue.queue)
    caplog.set_level(logging.WARNING)
    assert worker.process(message) == Outcome.REJECTED
    assert "no dead-letter queue" in caplog.text and "retry backoff" in caplog.text
    again = poll(sqs_queue.queue, timeout_s=5.0)  # back after the 1-second backoff
    assert again and again[0].attributes["ApproximateReceiveCount"] == "2"


def test_control_exceptions_cross_as_json_and_check_their_values() -> None:
    for original in (Retry(3.5, "busy"), Reject("bad input")):
        copied = TaskControl.from_report(json.loads(json.dumps(original.report())))
        assert type(copied) is type(original) and str(copied) == str(original)
    assert TaskControl.from_report({"kind": "pickle"}) is None
    assert TaskControl.from_report("retry") is None
    with pytest.raises(ValueError, match="-1"):
        Retry(-1)
