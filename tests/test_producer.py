"""The producer side: submit_with, submit_batch, size checks, retries, FIFO, delays."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from datetime import date
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError, EndpointConnectionError
from botocore.stub import Stubber

from sqstaskmaster.errors import (
    BatchSendError,
    EncodeError,
    InvalidTaskNameError,
    MessageTooLargeError,
)
from sqstaskmaster.local import LocalQueue
from sqstaskmaster.sqs.facts import message_size
from sqstaskmaster.sqs.preparing import TaskMessage
from sqstaskmaster.sqs.sending import plan_batches
from sqstaskmaster.sqs.wire import MAX_KWARGS_DEPTH
from sqstaskmaster.task_manager import TaskManager, encode_body, service_name_attribute
from sqstaskmaster.testing import SQSServer, TestQueue

SENDER = "producer-tests"


class RequestLog:
    """What an SQS client sent: every HTTP request, and the entries of each batch."""

    def __init__(self) -> None:
        self.requests: List[str] = []
        self.batches: List[List[Dict[str, Any]]] = []

    def on_send(self, request: Any, **kwargs: Any) -> None:
        self.requests.append(request.headers.get("X-Amz-Target", b"").decode())

    def on_batch(self, params: Dict[str, Any], **kwargs: Any) -> None:
        self.batches.append(list(params["Entries"]))

    def sends(self) -> List[str]:
        return [target for target in self.requests if "SendMessage" in target]


@contextlib.contextmanager
def recording_manager(server: SQSServer, queue: TestQueue) -> Iterator[Any]:
    """A TaskManager on its own SQS resource, with that resource's requests recorded."""
    sqs = server.session.resource("sqs", endpoint_url=server.endpoint_url)
    log = RequestLog()
    events = sqs.meta.client.meta.events
    events.register("before-send.sqs.*", log.on_send)
    events.register("before-parameter-build.sqs.SendMessageBatch", log.on_batch)
    yield TaskManager(queue.url, sqs=sqs, sender_name=SENDER), log


def receive_all(queue: TestQueue, expected: int, timeout_s: float = 10.0) -> List[Any]:
    """Receive (and delete) messages until ``expected`` arrived, in arrival order."""
    received: List[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(received) < expected and time.monotonic() < deadline:
        batch = queue.queue.receive_messages(
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        received.extend(batch)
        if batch:
            queue.queue.delete_messages(
                Entries=[
                    {"Id": str(n), "ReceiptHandle": message.receipt_handle}
                    for n, message in enumerate(batch)
                ]
            )
    return received


def queue_depth(queue: TestQueue) -> int:
    queue.queue.reload()
    attributes = queue.queue.attributes
    return sum(
        int(attributes[name])
        for name in (
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        )
    )


# -- batches against moto -------------------------------------------------------------------


def test_batch_of_25_arrives_intact_in_order_of_ids(sqs_server: SQSServer) -> None:
    queue = sqs_server.make_queue()
    tasks = [(f"task-{i}", {"n": i, "day": date(2019, 1, 1 + i % 28)}) for i in range(25)]
    with recording_manager(sqs_server, queue) as (tm, log):
        ids = tm.submit_batch(tasks)

    assert [len(batch) for batch in log.batches] == [10, 10, 5]
    assert len(log.sends()) == 3
    assert len(ids) == 25 and len(set(ids)) == 25
    received = {message.message_id: message for message in receive_all(queue, 25)}
    assert set(received) == set(ids)
    for i, message_id in enumerate(ids):
        message = received[message_id]
        # 0.0.11's wire format, byte for byte
        assert message.body == (
            f'{{"task": "task-{i}", "kwargs": {{"n": {i}, "day": "2019-01-{1 + i % 28:02d}"}}}}'
        )
        assert message.message_attributes == {
            "service_name": {"StringValue": SENDER, "DataType": "String"}
        }


def test_batch_requests_stay_under_the_queue_size_limit(sqs_server: SQSServer) -> None:
    queue = sqs_server.make_queue(attributes={"MaximumMessageSize": "4096"})
    tasks = [("fill", {"data": "x" * 900, "i": i}) for i in range(10)]  # ~970 bytes each
    with recording_manager(sqs_server, queue) as (tm, log):
        ids = tm.submit_batch(tasks)

    sizes = [
        [message_size(entry["MessageBody"], entry["MessageAttributes"]) for entry in batch]
        for batch in log.batches
    ]
    assert all(sum(batch) <= 4096 for batch in sizes), sizes
    assert [len(batch) for batch in sizes] == [4, 4, 2]
    received = {message.message_id: message.body for message in receive_all(queue, 10)}
    assert [received[message_id] for message_id in ids] == [encode_body(*t) for t in tasks]


def test_plan_batches_cuts_in_order_by_count_and_bytes() -> None:
    assert plan_batches([], 100) == []
    assert plan_batches([1] * 23, 100) == [range(0, 10), range(10, 20), range(20, 23)]
    assert plan_batches([40, 40, 40, 100, 10, 90], 100) == [
        range(0, 2),
        range(2, 3),
        range(3, 4),
        range(4, 6),
    ]


def test_sqs_failed_entries_are_retried(sqs_server: SQSServer) -> None:
    producer = StubbedProducer(sqs_server, 4)
    with Stubber(producer.client) as stub:
        stub.add_response(
            "send_message_batch",
            {
                "Successful": [_ok(0), _ok(2), _ok(3)],
                "Failed": [_failed(1, "InternalError", sender_fault=False)],
            },
            producer.batch(range(4)),
        )
        stub.add_response(
            "send_message_batch",
            {"Successful": [_ok(1)], "Failed": []},
            producer.batch([1]),
        )
        ids = producer.tm.submit_batch(producer.tasks)
        stub.assert_no_pending_responses()
    assert ids == ["id-0", "id-1", "id-2", "id-3"]


def test_entries_sqs_keeps_failing_are_raised_not_dropped(sqs_server: SQSServer) -> None:
    producer = StubbedProducer(sqs_server, 6)
    with Stubber(producer.client) as stub:
        # Given: entry 2 fails every time (transient code), entry 5 is the sender's fault
        stub.add_response(
            "send_message_batch",
            {
                "Successful": [_ok(0), _ok(1), _ok(3), _ok(4)],
                "Failed": [
                    _failed(2, "InternalError", sender_fault=False),
                    _failed(5, "InvalidParameterValue", sender_fault=True),
                ],
            },
            producer.batch(range(6)),
        )
        for _ in range(2):
            stub.add_response(
                "send_message_batch",
                {"Successful": [], "Failed": [_failed(2, "InternalError", sender_fault=False)]},
                producer.batch([2]),
            )
        # When
        with pytest.raises(BatchSendError) as caught:
            producer.tm.submit_batch(producer.tasks, max_attempts=3)
        stub.assert_no_pending_responses()

    # Then: the error lists exactly the two unsent entries, and the ids of the others
    error = caught.value
    assert [(f.index, f.task, f.code, f.sender_fault) for f in error.failed] == [
        (2, "t2", "InternalError", False),
        (5, "t5", "InvalidParameterValue", True),
    ]
    assert error.message_ids == ["id-0", "id-1", None, "id-3", "id-4", None]
    assert "2 of 6 messages were not sent" in str(error)
    assert "entry 2 task 't2': InternalError" in str(error)
    assert "entry 5 task 't5': InvalidParameterValue" in str(error)


def test_a_rejected_request_lists_every_unsent_entry(sqs_server: SQSServer) -> None:
    producer = StubbedProducer(sqs_server, 25)
    with Stubber(producer.client) as stub:
        stub.add_response(
            "send_message_batch",
            {"Successful": [_ok(i) for i in range(10)], "Failed": []},
            producer.batch(range(10)),
        )
        stub.add_client_error(
            "send_message_batch",
            service_error_code="AccessDenied",
            service_message="not allowed",
            http_status_code=403,
        )
        with pytest.raises(BatchSendError) as caught:
            # the Stubber answers in call order
            producer.tm.submit_batch(producer.tasks, max_in_flight=1)
        stub.assert_no_pending_responses()
    error = caught.value
    assert [f.index for f in error.failed] == list(range(10, 25))
    assert {f.code for f in error.failed[:10]} == {"AccessDenied"}
    assert {f.code for f in error.failed[10:]} == {"NotAttempted"}
    assert error.message_ids == [f"id-{i}" for i in range(10)] + [None] * 15
    assert "and 5 more" in str(error)


class StubbedProducer:
    """A TaskManager on a new queue, and ``count`` tasks for it to send to a Stubber.

    The queue's limits are read from moto first, so that only the sends reach the Stubber.
    """

    def __init__(self, server: SQSServer, count: int) -> None:
        queue = server.make_queue()
        sqs = server.session.resource("sqs", endpoint_url=server.endpoint_url)
        self.url = queue.url
        self.client = sqs.meta.client
        self.tm = TaskManager(queue.url, sqs=sqs, sender_name=SENDER)
        self.tm.queue_limits()
        self.tasks = [(f"t{i}", {"i": i}) for i in range(count)]

    def batch(self, indexes: Iterable[int]) -> Dict[str, Any]:
        """The send_message_batch request expected for the tasks at ``indexes``."""
        return {"QueueUrl": self.url, "Entries": [_entry(i, *self.tasks[i]) for i in indexes]}


def _entry(index: int, task: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "Id": str(index),
        "MessageBody": encode_body(task, kwargs),
        "MessageAttributes": service_name_attribute(SENDER),
    }


def _ok(index: int) -> Dict[str, Any]:
    return {"Id": str(index), "MessageId": f"id-{index}", "MD5OfMessageBody": "x" * 32}


def _failed(index: int, code: str, *, sender_fault: bool) -> Dict[str, Any]:
    return {"Id": str(index), "SenderFault": sender_fault, "Code": code, "Message": "nope"}


# -- size and encoding checks ---------------------------------------------------------------


def test_message_size_counts_body_and_attributes_in_utf8() -> None:
    attributes = {
        "service_name": {"DataType": "String", "StringValue": "é"},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01\x02"},
    }
    assert message_size("日本", attributes) == 6 + (12 + 6 + 2) + (4 + 6 + 3)


def test_a_message_at_the_limit_is_sent_and_one_byte_more_is_refused(
    sqs_server: SQSServer,
) -> None:
    queue = sqs_server.make_queue(attributes={"MaximumMessageSize": "1024"})
    with recording_manager(sqs_server, queue) as (tm, log):
        assert tm.queue_limits().max_message_size == 1024
        attributes_bytes = len("service_name") + len("String") + len(SENDER)
        room = 1024 - attributes_bytes - len(encode_body("fit", {"x": ""}))
        tm.submit_with("fit", {"x": "a" * room})
        with pytest.raises(MessageTooLargeError) as caught:
            tm.submit_with("fit", {"x": "a" * (room + 1)})
    assert (caught.value.task, caught.value.size, caught.value.limit) == ("fit", 1025, 1024)
    assert "'fit'" in str(caught.value) and "1025" in str(caught.value)
    assert len(log.sends()) == 1
    assert len(receive_all(queue, 1)) == 1


def test_oversized_body_is_refused_before_sending(sqs_server: SQSServer) -> None:
    queue = sqs_server.make_queue(attributes={"MaximumMessageSize": "1024"})
    with recording_manager(sqs_server, queue) as (tm, log):
        # 600 characters fit SQS's limit only if counted as characters; in UTF-8 they are 1,200
        with pytest.raises(MessageTooLargeError, match="'accents'"):
            tm.submit_with("accents", {"text": "é" * 600})
        # one oversized entry stops the whole batch before any request
        small = [("small", {"i": i}) for i in range(12)]
        with pytest.raises(MessageTooLargeError) as caught:
            tm.submit_batch([*small, ("big", {"blob": "x" * 2000})])
    assert caught.value.task == "big" and caught.value.index == 12
    assert caught.value.limit == 1024 and caught.value.size > 2000
    assert "entry 12" in str(caught.value)
    assert log.sends() == []
    assert queue_depth(queue) == 0


def test_unencodable_kwargs_are_refused_before_sending(sqs_server: SQSServer) -> None:
    queue = sqs_server.make_queue()
    loop: Dict[str, Any] = {}
    loop["self"] = loop
    with recording_manager(sqs_server, queue) as (tm, log):
        with pytest.raises(EncodeError, match="'circular'"):
            tm.submit_with("circular", {"loop": loop})
        with pytest.raises(EncodeError) as caught:
            tm.submit_batch([("fine", {}), ("circular", {"loop": loop})])
    assert caught.value.task == "circular" and caught.value.index == 1
    assert log.sends() == []
    assert queue_depth(queue) == 0


@pytest.mark.parametrize("bad", [5, None, ["a"], "", True, b"x"], ids=repr)
def test_task_names_no_worker_can_run_are_refused(sqs_server: SQSServer, bad: Any) -> None:
    queue = sqs_server.make_queue()
    with recording_manager(sqs_server, queue) as (tm, log):
        with pytest.raises(InvalidTaskNameError, match=re.escape(repr(bad))) as caught:
            tm.submit_with(bad, {"x": 1})
        assert caught.value.task == bad and "non-empty str" in str(caught.value)
        with pytest.raises(InvalidTaskNameError, match="entry 1 of the batch") as caught:
            tm.submit_batch([("fine", {}), (bad, {})])
        assert caught.value.index == 1
        with pytest.raises(InvalidTaskNameError, match=re.escape(repr(bad))):
            TaskMessage(bad, {})
    assert log.sends() == []
    assert queue_depth(queue) == 0


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"a": [1, float("nan")]}, "kwargs['a'][1] is nan"),
        ({"a": {"b": (2, float("inf"))}}, "kwargs['a']['b'][1] is inf"),
        ({"a": {float("-inf"): 1}}, "a key of kwargs['a'] is -inf"),
    ],
)
def test_nan_and_infinity_are_refused_naming_the_value(
    sqs_server: SQSServer, kwargs: Dict[str, Any], named: str
) -> None:
    queue = sqs_server.make_queue()
    with recording_manager(sqs_server, queue) as (tm, log):
        with pytest.raises(EncodeError, match=re.escape(named)):
            tm.submit_with("t", kwargs)
        with pytest.raises(EncodeError, match=re.escape(named)) as caught:
            tm.submit_batch([("fine", {}), TaskMessage("t", kwargs)])
        assert caught.value.index == 1
    assert log.sends() == []
    assert queue_depth(queue) == 0


def nested(levels: int) -> Any:
    """``levels`` lists, one inside the other."""
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_kwargs_too_deep_for_a_worker_to_decode_are_refused(sqs_server: SQSServer) -> None:
    queue = sqs_server.make_queue()
    with recording_manager(sqs_server, queue) as (tm, log):
        # kwargs {"a": nested(MAX - 1)} are MAX levels deep: sent, and a worker decodes them
        tm.submit_with("deepest", {"a": nested(MAX_KWARGS_DEPTH - 1)})
        with pytest.raises(EncodeError, match=f"nest more than {MAX_KWARGS_DEPTH} levels"):
            tm.submit_with("deeper", {"a": nested(MAX_KWARGS_DEPTH)})
        # json encodes 700 levels, but whether a worker decodes them depends on its stack
        with pytest.raises(EncodeError, match="nest more than 500 levels"):
            tm.submit_batch([("fine", {}), ("deep", {"a": nested(700)})])
        # many brackets side by side are not depth
        tm.submit_with("wide", {"a": [[[]] for _ in range(MAX_KWARGS_DEPTH)]})
    assert len(log.sends()) == 2
    decoded = [tm.decode(message) for message in receive_all(queue, 2)]
    assert sorted(task for task, _ in decoded) == ["deepest", "wide"]


def test_0_0_11_submit_still_sends_what_0_0_11_sends() -> None:
    # SPEC.md: submit keeps 0.0.11's behaviour exactly; only the new API refuses.
    tm = TaskManager("local://0.0.11", queue_constructor=LocalQueue)
    tm.submit(5, x=float("nan"))
    tm.submit(b"x")
    received = tm.queue.receive_messages(MaxNumberOfMessages=2, WaitTimeSeconds=1)
    LocalQueue.local_queues.pop("local://0.0.11")
    bodies = [message.body for message in received]
    assert bodies == ['{"task": 5, "kwargs": {"x": NaN}}', '{"task": "b\'x\'", "kwargs": {}}']


def test_bad_items_and_options_are_refused_before_sending(sqs_server: SQSServer) -> None:
    queue = sqs_server.make_queue()
    with recording_manager(sqs_server, queue) as (tm, log):
        with pytest.raises(TypeError, match="entry 1"):
            tm.submit_batch([("ok", {}), "not a pair"])
        with pytest.raises(ValueError, match="delay_seconds"):
            tm.submit_batch([("ok", {}), TaskMessage("late", {}, delay_seconds=901)])
        with pytest.raises(ValueError, match="'service_name' is reserved"):
            tm.submit_with(
                "x",
                {},
                message_attributes={"service_name": {"DataType": "String", "StringValue": "y"}},
            )
        with pytest.raises(ValueError, match="'AWS.trace'"):
            tm.submit_with(
                "x",
                {},
                message_attributes={"AWS.trace": {"DataType": "String", "StringValue": "y"}},
            )
        with pytest.raises(ValueError, match="'flag'"):
            tm.submit_with("x", {}, message_attributes={"flag": {"StringValue": "no type"}})
    assert log.sends() == []
    assert tm.submit_batch([]) == []
    assert queue_depth(queue) == 0


# -- options against moto -------------------------------------------------------------------


def test_delay_seconds_hold_a_message_back(sqs_server: SQSServer) -> None:
    queue = sqs_server.make_queue()
    tm = sqs_server.task_manager(queue, sender_name=SENDER)
    sent = time.monotonic()
    tm.submit_batch([("later", {}), TaskMessage("now", {}, delay_seconds=0)], delay_seconds=2)
    tm.submit_with("later too", {}, delay_seconds=2)

    first = queue.queue.receive_messages(MaxNumberOfMessages=10, WaitTimeSeconds=0)
    assert [message.body for message in first] == [encode_body("now", {})]
    first[0].delete()
    later = receive_all(queue, 2, timeout_s=10)
    assert time.monotonic() - sent >= 1.5
    assert sorted(message.body for message in later) == sorted(
        [encode_body("later", {}), encode_body("later too", {})]
    )


def test_extra_message_attributes_arrive_beside_service_name(sqs_server: SQSServer) -> None:
    queue = sqs_server.make_queue()
    tm = sqs_server.task_manager(queue, sender_name=SENDER)
    priority = {"priority": {"DataType": "Number", "StringValue": "5"}}
    tm.submit_with("one", {"a": 1}, message_attributes=priority)
    tm.submit_batch(
        [
            ("two", {}),
            TaskMessage(
                "three", {}, message_attributes={"tag": {"DataType": "String", "StringValue": "t"}}
            ),
        ],
        message_attributes=priority,
    )
    received = {message.body: message.message_attributes for message in receive_all(queue, 3)}
    service = service_name_attribute(SENDER)
    assert received[encode_body("one", {"a": 1})] == {**service, **priority}
    assert received[encode_body("two", {})] == {**service, **priority}
    assert received[encode_body("three", {})] == {
        **service,
        "tag": {"DataType": "String", "StringValue": "t"},
    }


def test_fifo_queue_keeps_group_order(sqs_server: SQSServer) -> None:
    queue = sqs_server.make_queue(fifo=True)
    tm = sqs_server.task_manager(queue, sender_name=SENDER)
    tasks = [
        TaskMessage(
            f"g{i % 3}", {"seq": i}, message_group_id=f"group-{i % 3}", deduplication_id=f"d{i}"
        )
        for i in range(24)
    ]
    ids = tm.submit_batch(tasks)
    assert len(set(ids)) == 24

    received = receive_all(queue, 24)
    by_group: Dict[str, List[int]] = {}
    for message in received:
        by_group.setdefault(message.attributes["MessageGroupId"], []).append(
            int(message.body.split('"seq": ')[1].rstrip("}"))
        )
    assert by_group == {f"group-{g}": list(range(g, 24, 3)) for g in range(3)}


def test_fifo_deduplication_id_drops_the_repeat(sqs_server: SQSServer) -> None:
    queue = sqs_server.make_queue(fifo=True)
    tm = sqs_server.task_manager(queue, sender_name=SENDER)
    tm.submit_with("pay", {"invoice": 7}, message_group_id="billing", deduplication_id="inv-7")
    tm.submit_with("pay", {"invoice": 7}, message_group_id="billing", deduplication_id="inv-7")
    tm.submit_batch(
        [TaskMessage("pay", {"invoice": 8}, deduplication_id="inv-8")], message_group_id="billing"
    )
    received = receive_all(queue, 2)
    assert [message.body for message in received] == [
        encode_body("pay", {"invoice": 7}),
        encode_body("pay", {"invoice": 8}),
    ]
    assert queue_depth(queue) == 0  # the repeat of inv-7 was never enqueued


def test_fifo_options_are_checked_before_sending(sqs_server: SQSServer) -> None:
    queue = sqs_server.make_queue(fifo=True)
    with recording_manager(sqs_server, queue) as (tm, log):
        assert tm.queue_limits().fifo
        with pytest.raises(ValueError, match="message_group_id"):
            tm.submit_batch([TaskMessage("a", {}, deduplication_id="1")])
        with pytest.raises(ValueError, match="deduplication_id"):
            tm.submit_batch([("a", {})], message_group_id="g")
        with pytest.raises(ValueError, match="FIFO queue takes no per-message delay_seconds"):
            tm.submit_with("a", {}, message_group_id="g", deduplication_id="1", delay_seconds=5)
    assert log.sends() == []


# -- LocalQueue -----------------------------------------------------------------------------


def test_local_queue_takes_batches_and_options() -> None:
    LocalQueue.local_queues.clear()
    tm = TaskManager("local-producer", queue_constructor=LocalQueue, sender_name=SENDER)
    assert tm.queue_limits().max_message_size == 1_048_576
    ids = tm.submit_batch([(f"t{i}", {"i": i}) for i in range(23)], delay_seconds=3)
    tm.submit_with("last", {"i": 23}, message_group_id="ignored here")
    assert len(set(ids)) == 23

    received = tm.queue.receive_messages(WaitTimeSeconds=0, MaxNumberOfMessages=30)
    assert [message.body for message in received] == [
        encode_body(f"t{i}", {"i": i}) for i in range(23)
    ] + [encode_body("last", {"i": 23})]
    assert all(m.message_attributes == service_name_attribute(SENDER) for m in received)
    with pytest.raises(MessageTooLargeError):
        tm.submit_with("huge", {"blob": "x" * 1_048_576})
    LocalQueue.local_queues.clear()


# -- concurrent batch requests --------------------------------------------------------------


class Overlap:
    """Counts SendMessageBatch requests in flight at once (each held ``hold_s`` before sending)."""

    def __init__(self, hold_s: float = 0.03) -> None:
        self.hold_s = hold_s
        self.lock = threading.Lock()
        self.active = 0
        self.most = 0
        self.threads: List[str] = []

    def install(self, client: Any) -> None:
        events = client.meta.events
        events.register("before-call.sqs.SendMessageBatch", self.before)
        events.register("after-call.sqs.SendMessageBatch", self.after)

    def before(self, **kwargs: Any) -> None:
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
            self.threads.append(threading.current_thread().name)
        time.sleep(self.hold_s)  # long enough for the other requests to start

    def after(self, **kwargs: Any) -> None:
        with self.lock:
            self.active -= 1


class Faults:
    """A botocore hook between a client and moto that fails chosen requests or entries.

    ``fail_entries`` maps an entry index to (code, sender_fault, times): the
    entry is reported failed that many times (None: always), while the other
    entries of its request are really sent to moto by a second client.
    ``fail_request`` maps the first entry index of a request to the exception
    raised instead of sending it. ``hold_s`` maps a first entry index to
    seconds the request waits (after ``gate`` is set, if given) before going on.
    """

    def __init__(self, server: SQSServer, url: str) -> None:
        self.url = url
        self.plain = server.session.client("sqs", endpoint_url=server.endpoint_url)
        self.fail_entries: Dict[int, Tuple[str, bool, Optional[int]]] = {}
        self.fail_request: Dict[int, Exception] = {}
        self.hold_s: Dict[int, float] = {}
        self.gate: Optional[threading.Event] = None
        self.lock = threading.Lock()
        self.failures: Dict[int, int] = {}

    def install(self, client: Any) -> None:
        events = client.meta.events
        events.register("before-parameter-build.sqs.SendMessageBatch", self.remember)
        events.register("before-call.sqs.SendMessageBatch", self.intercept)

    def remember(self, params: Dict[str, Any], context: Dict[str, Any], **kwargs: Any) -> None:
        context["test_entries"] = list(params["Entries"])

    def intercept(self, context: Dict[str, Any], **kwargs: Any) -> Any:
        entries = context["test_entries"]
        first = int(entries[0]["Id"])
        if first in self.hold_s:
            if self.gate is not None:
                assert self.gate.wait(5), "the failing request never ran"
            time.sleep(self.hold_s[first])
        if first in self.fail_request:
            if self.gate is not None:
                self.gate.set()
            raise self.fail_request[first]
        failed, good = [], []
        with self.lock:
            for entry in entries:
                index = int(entry["Id"])
                code, sender_fault, times = self.fail_entries.get(index, ("", False, 0))
                if times is None or self.failures.get(index, 0) < times:
                    self.failures[index] = self.failures.get(index, 0) + 1
                    failed.append(
                        {
                            "Id": entry["Id"],
                            "Code": code,
                            "Message": "injected",
                            "SenderFault": sender_fault,
                        }
                    )
                else:
                    good.append(entry)
        if not failed:
            return None  # untouched: the request goes to moto
        response: Dict[str, Any] = {"Successful": [], "Failed": failed}
        if good:
            response["Successful"] = self.plain.send_message_batch(QueueUrl=self.url, Entries=good)[
                "Successful"
            ]
        return AWSResponse(self.url, 200, {}, None), response


@pytest.mark.parametrize("max_in_flight", [1, 4])
def test_95_tasks_arrive_complete_with_ids_in_input_order(
    sqs_server: SQSServer, max_in_flight: int
) -> None:
    queue = sqs_server.make_queue()
    tasks = [(f"task-{i}", {"n": i}) for i in range(95)]
    with recording_manager(sqs_server, queue) as (tm, log):
        overlap = Overlap()
        overlap.install(tm.queue.meta.client)
        ids = tm.submit_batch(tasks, max_in_flight=max_in_flight)

    assert len(log.sends()) == 10  # ceil(95 / 10)
    assert sorted(len(batch) for batch in log.batches) == [5] + [10] * 9
    assert sorted(int(entry["Id"]) for batch in log.batches for entry in batch) == list(range(95))
    if max_in_flight == 1:  # exactly as before: one request after the other, in input order
        assert overlap.most == 1
        assert [int(batch[0]["Id"]) for batch in log.batches] == list(range(0, 95, 10))
        assert set(overlap.threads) == {threading.current_thread().name}
    else:
        assert 2 <= overlap.most <= max_in_flight
        assert all(name.startswith("sqstaskmaster-send") for name in overlap.threads)
    assert len(ids) == 95 and len(set(ids)) == 95
    received = {message.message_id: message.body for message in receive_all(queue, 95)}
    assert [received[message_id] for message_id in ids] == [encode_body(*t) for t in tasks]


def test_failed_entries_of_one_concurrent_request_are_retried_then_listed(
    sqs_server: SQSServer,
) -> None:
    # Given: among 10 concurrent requests, entry 31 fails once, 35 always, 47 is the sender's fault
    queue = sqs_server.make_queue()
    tasks = [(f"t{i}", {"i": i}) for i in range(95)]
    with recording_manager(sqs_server, queue) as (tm, log):
        faults = Faults(sqs_server, queue.url)
        faults.fail_entries = {
            31: ("InternalError", False, 1),
            35: ("InternalError", False, None),
            47: ("InvalidParameterValue", True, None),
        }
        faults.install(tm.queue.meta.client)
        overlap = Overlap(hold_s=0.01)
        overlap.install(tm.queue.meta.client)
        # When
        with pytest.raises(BatchSendError) as caught:
            tm.submit_batch(tasks, max_in_flight=4, max_attempts=3)

    # Then: 31 was retried and sent, 35 gave up after 3 sends, 47 after one
    error = caught.value
    assert [(f.index, f.task, f.code, f.sender_fault) for f in error.failed] == [
        (35, "t35", "InternalError", False),
        (47, "t47", "InvalidParameterValue", True),
    ]
    assert faults.failures == {31: 1, 35: 3, 47: 1}
    assert [[int(e["Id"]) for e in batch] for batch in log.batches if len(batch) < 5] == [
        [31, 35],
        [35],
    ]
    assert overlap.most >= 2
    sent = [i for i in range(95) if i not in (35, 47)]
    assert [i for i, message_id in enumerate(error.message_ids) if message_id] == sent
    received = {message.message_id: message.body for message in receive_all(queue, 93)}
    assert received == {error.message_ids[i]: encode_body(*tasks[i]) for i in sent}
    assert "2 of 95 messages were not sent (93 were)" in str(error)


def test_the_last_concurrent_request_failing_in_transit_lists_its_entries(
    sqs_server: SQSServer,
) -> None:
    queue = sqs_server.make_queue()
    tasks = [(f"t{i}", {"i": i}) for i in range(95)]
    with recording_manager(sqs_server, queue) as (tm, log):
        faults = Faults(sqs_server, queue.url)
        faults.fail_request = {90: EndpointConnectionError(endpoint_url=queue.url)}
        faults.install(tm.queue.meta.client)
        with pytest.raises(BatchSendError) as caught:
            tm.submit_batch(tasks)  # the default: concurrent

    error = caught.value
    assert isinstance(error.__cause__, EndpointConnectionError)
    assert [f.index for f in error.failed] == list(range(90, 95))
    assert {f.code for f in error.failed} == {"EndpointConnectionError"}
    assert all("may or may not have enqueued it" in f.message for f in error.failed)
    assert [message_id is not None for message_id in error.message_ids] == [True] * 90 + [False] * 5
    received = {message.message_id for message in receive_all(queue, 90)}
    assert received == set(error.message_ids[:90])


def test_a_rejected_concurrent_request_lets_those_in_flight_finish_and_starts_no_more(
    sqs_server: SQSServer,
) -> None:
    # Given: 4 requests in flight; the second is rejected while the other three still run
    queue = sqs_server.make_queue()
    tasks = [(f"t{i}", {"i": i}) for i in range(95)]
    with recording_manager(sqs_server, queue) as (tm, log):
        faults = Faults(sqs_server, queue.url)
        faults.gate = threading.Event()
        faults.fail_request = {
            10: ClientError(
                {"Error": {"Code": "AccessDenied", "Message": "not allowed", "Type": "Sender"}},
                "SendMessageBatch",
            )
        }
        faults.hold_s = {0: 0.3, 20: 0.2, 30: 0.2}
        faults.install(tm.queue.meta.client)
        # When
        with pytest.raises(BatchSendError) as caught:
            tm.submit_batch(tasks, max_in_flight=4)

    # Then: 0-9 and 20-39 were sent, 10-19 rejected, 40-94 never attempted; each listed once
    error = caught.value
    assert isinstance(error.__cause__, ClientError)
    assert [(f.index, f.code, f.sender_fault) for f in error.failed] == [
        (i, "AccessDenied", True) for i in range(10, 20)
    ] + [(i, "NotAttempted", False) for i in range(40, 95)]
    sent = [*range(0, 10), *range(20, 40)]
    assert [i for i, message_id in enumerate(error.message_ids) if message_id] == sent
    assert len(log.sends()) == 3  # 0, 20 and 30 reached moto; 10 was refused before
    received = {message.message_id: message.body for message in receive_all(queue, 30)}
    assert received == {error.message_ids[i]: encode_body(*tasks[i]) for i in sent}
    assert "65 of 95 messages were not sent (30 were)" in str(error)


def test_fifo_batches_go_one_at_a_time_in_order_whatever_max_in_flight(
    sqs_server: SQSServer,
) -> None:
    queue = sqs_server.make_queue(fifo=True)
    tasks = [
        TaskMessage(
            f"g{i % 3}", {"seq": i}, message_group_id=f"group-{i % 3}", deduplication_id=f"d{i}"
        )
        for i in range(48)
    ]
    with recording_manager(sqs_server, queue) as (tm, log):
        overlap = Overlap(hold_s=0.01)
        overlap.install(tm.queue.meta.client)
        ids = tm.submit_batch(tasks, max_in_flight=8)

    assert overlap.most == 1
    assert set(overlap.threads) == {threading.current_thread().name}
    assert [[int(e["Id"]) for e in batch] for batch in log.batches] == [
        list(range(start, min(start + 10, 48))) for start in range(0, 48, 10)
    ]
    assert len(set(ids)) == 48
    by_group: Dict[str, List[int]] = {}
    for message in receive_all(queue, 48):
        by_group.setdefault(message.attributes["MessageGroupId"], []).append(
            int(message.body.split('"seq": ')[1].rstrip("}"))
        )
    assert by_group == {f"group-{g}": list(range(g, 48, 3)) for g in range(3)}


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "4", None])
def test_max_in_flight_must_be_a_positive_int(sqs_server: SQSServer, bad: Any) -> None:
    queue = sqs_server.make_queue()
    with recording_manager(sqs_server, queue) as (tm, log):
        with pytest.raises(ValueError, match=rf"max_in_flight is {bad!r}; it must be an int"):
            tm.submit_batch([("a", {}), ("b", {})], max_in_flight=bad)
    assert log.sends() == []
    assert queue_depth(queue) == 0


def test_more_in_flight_than_the_client_has_connections_is_warned(
    sqs_server: SQSServer, caplog: pytest.LogCaptureFixture
) -> None:
    queue = sqs_server.make_queue()
    tm = sqs_server.task_manager(queue, sender_name=SENDER)
    with caplog.at_level(logging.WARNING, logger="sqstaskmaster.sqs.sending"):
        ids = tm.submit_batch([("t", {"i": i}) for i in range(120)], max_in_flight=12)
    assert len(set(ids)) == 120
    assert "max_pool_connections" in caplog.text and "max_in_flight is 12" in caplog.text
