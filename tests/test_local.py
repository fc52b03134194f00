"""SPEC.md's LocalQueue and LocalMessage contract, and a producer and consumer in one process."""

from __future__ import annotations

import hashlib
import inspect
import logging
import queue
import threading
import time
from typing import Any, List

import pytest
from handlers import TaskHandler

from sqstaskmaster.local import LocalMessage, LocalQueue
from sqstaskmaster.task_manager import TaskManager

LOGGER_NAME = "sqstaskmaster.local"
URL = "https://sqs.local/123/jobs"


@pytest.fixture(autouse=True)
def clear_local_queues() -> Any:
    LocalQueue.local_queues.clear()
    yield
    LocalQueue.local_queues.clear()


def local_records(caplog: pytest.LogCaptureFixture) -> List[logging.LogRecord]:
    return [record for record in caplog.records if record.name == LOGGER_NAME]


def bodies(messages: List[LocalMessage]) -> List[str]:
    return [message.body for message in messages]


# -- LocalQueue -------------------------------------------------------------------


def test_queues_are_shared_per_url_and_clearable() -> None:
    first = LocalQueue(URL)
    second = LocalQueue(URL)
    other = LocalQueue(URL + "-other")

    assert first.url == URL
    assert isinstance(first.queue, queue.SimpleQueue)
    assert first.queue is second.queue is LocalQueue.local_queues[URL]
    assert other.queue is not first.queue
    first.send_message(MessageBody="shared")
    assert bodies(second.receive_messages(WaitTimeSeconds=0)) == ["shared"]

    first.send_message(MessageBody="forgotten")
    cleared = first.queue
    LocalQueue.local_queues.clear()
    assert LocalQueue.local_queues == {}
    fresh = LocalQueue(URL)
    assert fresh.queue is not cleared
    assert fresh.receive_messages(WaitTimeSeconds=0) == []
    # .queue is looked up at each use: LocalQueues made before the clear share the new queue.
    assert first.queue is fresh.queue


def test_local_queues_is_a_class_level_mapping() -> None:
    assert "local_queues" in vars(LocalQueue)
    assert isinstance(LocalQueue.local_queues, dict)
    assert list(inspect.signature(LocalQueue).parameters) == ["url"]


def test_load_is_a_logged_noop(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    local = LocalQueue(URL)
    local.send_message(MessageBody="kept")
    assert local.load() is None
    (record,) = local_records(caplog)
    assert (record.levelno, record.msg, record.args) == (logging.INFO, "Noop load!", ())
    assert local.attributes["ApproximateNumberOfMessages"] == 1


def test_attributes_are_exactly_the_spec_dict() -> None:
    local = LocalQueue(URL)
    assert local.attributes == {
        "QueueArn": "LocalQueue replacing: " + URL,
        "ApproximateNumberOfMessages": 0,
        "ApproximateNumberOfMessagesNotVisible": 0,
        "ApproximateNumberOfMessagesDelayed": 0,
        "FifoQueue": True,
        "ContentBasedDeduplication": False,
    }
    local.send_message(MessageBody="a")
    LocalQueue(URL).send_message(MessageBody="b")
    count = local.attributes["ApproximateNumberOfMessages"]
    assert count == 2 and type(count) is int


def test_purge_empties_and_never_blocks() -> None:
    local = LocalQueue(URL)
    for n in range(3):
        local.send_message(MessageBody=str(n))
    done = threading.Event()

    def purge_twice() -> None:
        local.purge()
        local.purge()  # on an empty queue too
        done.set()

    thread = threading.Thread(target=purge_twice, daemon=True)
    thread.start()
    assert done.wait(timeout=5), "purge blocked"
    assert local.attributes["ApproximateNumberOfMessages"] == 0
    assert local.purge() is None


def test_send_message_enqueues_a_local_message_and_returns_the_md5() -> None:
    local = LocalQueue(URL)
    attributes = {"service_name": {"StringValue": "me", "DataType": "String"}}
    response = local.send_message(MessageBody="héllo", MessageAttributes=attributes)
    assert isinstance(response, dict)
    assert response["MD5OfMessageBody"] == hashlib.md5("héllo".encode()).hexdigest()
    local.send_message(MessageBody="bare")

    first, second = local.receive_messages(WaitTimeSeconds=0, MaxNumberOfMessages=2)
    assert isinstance(first, LocalMessage)
    assert (first.body, first.attributes, first.message_attributes) == ("héllo", {}, attributes)
    assert (second.body, second.attributes, second.message_attributes) == ("bare", {}, {})


def test_receive_is_fifo_up_to_max_number_of_messages() -> None:
    local = LocalQueue(URL)
    for n in range(5):
        local.send_message(MessageBody=str(n))
    assert bodies(local.receive_messages(WaitTimeSeconds=0)) == ["0"]
    assert bodies(local.receive_messages(WaitTimeSeconds=0, MaxNumberOfMessages=3)) == [
        "1",
        "2",
        "3",
    ]
    # Fewer than asked for: what there is, without waiting out WaitTimeSeconds.
    started = time.monotonic()
    assert bodies(local.receive_messages(WaitTimeSeconds=5, MaxNumberOfMessages=10)) == ["4"]
    assert time.monotonic() - started < 4


def test_receive_defaults_to_one_message() -> None:
    local = LocalQueue(URL)
    local.send_message(MessageBody="a")
    local.send_message(MessageBody="b")
    assert bodies(local.receive_messages()) == ["a"]
    parameters = inspect.signature(LocalQueue.receive_messages).parameters
    assert parameters["WaitTimeSeconds"].default == 20
    assert parameters["MaxNumberOfMessages"].default == 1


def test_receive_waits_at_most_wait_time_seconds() -> None:
    local = LocalQueue(URL)
    started = time.monotonic()
    assert local.receive_messages(WaitTimeSeconds=0) == []
    assert time.monotonic() - started < 0.5
    started = time.monotonic()
    assert local.receive_messages(WaitTimeSeconds=1, MaxNumberOfMessages=3) == []
    assert 0.8 < time.monotonic() - started < 3


def test_receive_returns_a_message_sent_during_the_wait() -> None:
    local = LocalQueue(URL)
    timer = threading.Timer(0.2, LocalQueue(URL).send_message, kwargs={"MessageBody": "late"})
    timer.start()
    started = time.monotonic()
    try:
        assert bodies(local.receive_messages(WaitTimeSeconds=10)) == ["late"]
    finally:
        timer.cancel()
    assert time.monotonic() - started < 5


def test_receive_accepts_and_ignores_other_keywords() -> None:
    local = LocalQueue(URL)
    local.send_message(MessageBody="a", DelaySeconds=900)
    received = local.receive_messages(
        AttributeNames=["All"],
        MessageAttributeNames=["All"],
        MaxNumberOfMessages=1,
        WaitTimeSeconds=0,
        VisibilityTimeout=30,
    )
    assert bodies(received) == ["a"]


# -- LocalMessage -------------------------------------------------------------


def test_local_message_properties_are_read_only() -> None:
    message = LocalMessage("body", {"a": "1"}, {"m": {"StringValue": "x", "DataType": "String"}})
    assert list(inspect.signature(LocalMessage).parameters) == [
        "body",
        "attributes",
        "message_attributes",
    ]
    assert message.body == "body"
    assert message.attributes == {"a": "1"}
    assert message.message_attributes == {"m": {"StringValue": "x", "DataType": "String"}}
    for name in ("body", "attributes", "message_attributes"):
        with pytest.raises(AttributeError):
            setattr(message, name, "changed")
    assert message.body == "body"


def test_change_visibility_and_delete_only_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    local = LocalQueue(URL)
    local.send_message(MessageBody="a")
    local.send_message(MessageBody="b")
    (message,) = local.receive_messages(WaitTimeSeconds=0)

    assert message.change_visibility(VisibilityTimeout=30) is None
    assert message.delete() is None

    records = local_records(caplog)
    assert len(records) == 2
    assert all(record.levelno == logging.INFO for record in records)
    assert records[1].msg == "noop delete"
    assert records[1].args == ()
    # Nothing else happened to the queue.
    assert bodies(local.receive_messages(WaitTimeSeconds=0)) == ["b"]


# -- a producer and a consumer in one process ---------------------------------------


def add(a: int, b: int) -> int:
    return a + b


def sleep(seconds: float) -> None:
    time.sleep(seconds)


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


class Handler(TaskHandler):
    TASKS = {"add": add, "sleep": sleep, "busy": busy}


def test_producer_and_consumer_in_one_process_with_a_hard_timeout() -> None:
    # Given a producer that submitted a task too long for its hard timeout, then two quick ones
    producer = TaskManager(URL, queue_constructor=LocalQueue, sender_name="producer")
    producer.submit("sleep", seconds=60)
    producer.submit("busy", seconds=60)
    producer.submit("add", a=20, b=22)
    consumer = TaskManager(URL, queue_constructor=LocalQueue)
    timeouts = {"sqs_timeout": 3, "alarm_timeout": 1, "hard_timeout": 1}

    # When a consumer works through the queue
    handlers = []
    started = time.monotonic()
    for _, (task, kwargs, message) in zip(range(3), consumer.task_generator(wait_time=0)):
        assert message.message_attributes == {
            "service_name": {"StringValue": "producer", "DataType": "String"}
        }
        with Handler(message, task, kwargs, **timeouts) as handler:
            handler.run()
        handlers.append((handler, time.monotonic() - started))
        started = time.monotonic()

    # Then both long tasks were stopped at their hard timeout and reported, and the
    # consumer went on to the next message
    for handler, elapsed in handlers[:2]:
        ((error, context),) = handler.notified
        assert isinstance(error, TimeoutError)
        assert str(error) == "Hit Hard Timeout for message handler"
        assert context == {"body": handler._message.body}
        assert 0.9 < elapsed < 3
    last, _ = handlers[2]
    assert (last.task, last.result, last.notified) == ("add", 42, [])
    assert consumer.attributes()["ApproximateNumberOfMessages"] == 0
