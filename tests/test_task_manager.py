"""SPEC.md's TaskManager contract, mostly over HTTP against moto's SQS server."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import sys
import time
from datetime import date
from decimal import Decimal
from typing import Any, Dict, List, Tuple
from unittest.mock import patch

import boto3
import handlers
import pytest
from botocore.exceptions import ClientError

from sqstaskmaster.errors import DecodeError
from sqstaskmaster.local import LocalMessage, LocalQueue
from sqstaskmaster.task_manager import TaskManager

LOGGER_NAME = "sqstaskmaster.task_manager"
WAITING = "Waiting for work from SQS!"
DECODE_FAILED = "failed to decode message %s with %s"
FIELD_MISSING = "failed to get required field %s from content %s with %s"


class Recorder:
    """A notify callable that keeps what it was called with."""

    def __init__(self) -> None:
        self.calls: List[Tuple[BaseException, Any]] = []

    def __call__(self, exception: BaseException, *, context: Any) -> None:
        self.calls.append((exception, context))


def add(a: int, b: int) -> int:
    return a + b


def fail(reason: str) -> None:
    raise ValueError(reason)


class TaskHandler(handlers.TaskHandler):
    """Runs the tasks of these tests; remembers results and notifications."""

    TASKS = {"add": add, "fail": fail}


@pytest.fixture
def default_boto3(sqs_environment: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """boto3's defaults pointed at the test server, with no default session cached."""
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    return sqs_environment


@pytest.fixture(autouse=True)
def clear_local_queues() -> Any:
    LocalQueue.local_queues.clear()
    yield
    LocalQueue.local_queues.clear()


def own_resource(sqs_server: Any) -> Any:
    """An SQS resource of its own, so event hooks registered on it stay in one test."""
    return sqs_server.session.resource("sqs", endpoint_url=sqs_server.endpoint_url)


def record_receives(sqs: Any) -> List[Dict[str, Any]]:
    """Record the parameters of every ReceiveMessage request made through ``sqs``."""
    seen: List[Dict[str, Any]] = []

    def record(params: Dict[str, Any], **_: Any) -> None:
        seen.append(dict(params))

    sqs.meta.client.meta.events.register("provide-client-params.sqs.ReceiveMessage", record)
    return seen


def raw_receive(sqs_server: Any, url: str, wait_s: int = 0) -> List[Dict[str, Any]]:
    response = sqs_server.client.receive_message(
        QueueUrl=url,
        AttributeNames=["All"],
        MessageAttributeNames=["All"],
        MaxNumberOfMessages=10,
        WaitTimeSeconds=wait_s,
    )
    return response.get("Messages", [])


def depth(sqs_server: Any, url: str) -> Tuple[int, int]:
    attributes = sqs_server.client.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


def task_records(caplog: pytest.LogCaptureFixture) -> List[logging.LogRecord]:
    return [record for record in caplog.records if record.name == LOGGER_NAME]


# -- signature and construction ---------------------------------------------


def test_signatures_keep_the_0_0_11_parameters() -> None:
    init = list(inspect.signature(TaskManager.__init__).parameters.values())
    assert [(p.name, p.default) for p in init[1:5]] == [
        ("sqs_url", inspect.Parameter.empty),
        ("notify", None),
        ("queue_constructor", None),
        ("sender_name", None),
    ]
    # Anything new comes after the four, keyword-only.
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in init[5:])
    submit = list(inspect.signature(TaskManager.submit).parameters.values())
    assert [(p.name, p.kind) for p in submit] == [
        ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("task", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("kwargs", inspect.Parameter.VAR_KEYWORD),
    ]
    generator = inspect.signature(TaskManager.task_generator).parameters
    assert (generator["wait_time"].default, generator["sqs_timeout"].default) == (20, 20)
    notify = inspect.signature(TaskManager.notify).parameters
    assert list(notify) == ["self", "exception", "context"]
    assert notify["context"].default is None


def test_default_constructor_uses_boto3_resource_from_the_environment(
    default_boto3: Any, sqs_queue: Any
) -> None:
    notify = Recorder()
    tm = TaskManager(sqs_queue.url, notify, None, "me")

    assert tm.url == sqs_queue.url
    assert tm.sender_name == "me"
    assert tm._notify is notify
    assert tm.sqs.meta.service_name == "sqs"
    assert tm.sqs.meta.client.meta.endpoint_url == default_boto3.endpoint_url
    assert tm.queue.url == sqs_queue.url
    # The environment's endpoint really is where the messages go.
    tm.submit("t")
    assert [m["Body"] for m in raw_receive(default_boto3, sqs_queue.url)] == [
        '{"task": "t", "kwargs": {}}'
    ]


def test_default_constructor_creates_sqs_and_queue_in_the_constructor(
    default_boto3: Any, sqs_queue: Any
) -> None:
    tm = TaskManager(sqs_queue.url)
    assert tm.sender_name is None
    assert tm._notify is None
    assert type(tm.sqs).__name__ == "sqs.ServiceResource"
    assert type(tm.queue).__name__ == "sqs.Queue"


def test_session_keyword_builds_the_resource_from_that_session(
    sqs_environment: Any, sqs_queue: Any
) -> None:
    # The session brings region and credentials; the endpoint comes from the environment.
    session = boto3.session.Session(
        aws_access_key_id="other", aws_secret_access_key="other", region_name="eu-west-1"
    )
    tm = TaskManager(sqs_queue.url, session=session)
    assert tm.sqs.meta.client.meta.region_name == "eu-west-1"
    assert tm.sqs.meta.client.meta.endpoint_url == sqs_environment.endpoint_url
    assert tm.queue.url == sqs_queue.url


def test_sqs_keyword_uses_that_resource(sqs_server: Any, sqs_queue: Any) -> None:
    sqs = own_resource(sqs_server)
    tm = TaskManager(sqs_queue.url, sqs=sqs)
    assert tm.sqs is sqs
    assert tm.queue.url == sqs_queue.url
    assert tm.attributes()["QueueArn"].endswith(sqs_queue.name)


def test_session_and_sqs_together_are_refused(sqs_server: Any) -> None:
    with pytest.raises(TypeError) as caught:
        TaskManager("http://x/q", session=sqs_server.session, sqs=sqs_server.sqs)
    text = str(caught.value)
    assert repr(sqs_server.session) in text and repr(sqs_server.sqs) in text
    assert "pass one of them" in text


def test_local_queue_constructor() -> None:
    tm = TaskManager("local://q", queue_constructor=LocalQueue, sender_name="s")
    assert isinstance(tm.queue, LocalQueue)
    assert tm.queue.url == "local://q"
    assert tm.queue.queue is LocalQueue.local_queues["local://q"]
    assert tm.url == "local://q"
    assert tm.sender_name == "s"


@pytest.mark.parametrize("bad", [dict, "LocalQueue", 42, LocalQueue("local://instance")])
def test_invalid_queue_constructor_is_a_type_error_naming_the_value(bad: Any) -> None:
    with pytest.raises(TypeError) as caught:
        TaskManager("local://q", queue_constructor=bad)
    text = str(caught.value)
    assert text.startswith("TaskManager invalid queue_constructor type")
    assert repr(bad) in text


# -- attributes, purge, notify ------------------------------------------------


def test_attributes_reloads_each_time(sqs_server: Any, sqs_queue: Any) -> None:
    tm = sqs_server.task_manager(sqs_queue)
    assert tm.attributes()["ApproximateNumberOfMessages"] == "0"
    # Sent by another client: boto3 only drops its cached attributes after its own actions.
    sqs_server.client.send_message(QueueUrl=sqs_queue.url, MessageBody="x")
    attributes = tm.attributes()
    assert isinstance(attributes, dict)
    assert attributes["ApproximateNumberOfMessages"] == "1"


def test_purge_empties_the_queue_and_returns_none(sqs_server: Any, sqs_queue: Any) -> None:
    tm = sqs_server.task_manager(sqs_queue)
    tm.submit("a")
    tm.submit("b")
    assert tm.purge() is None
    assert depth(sqs_server, sqs_queue.url) == (0, 0)
    assert raw_receive(sqs_server, sqs_queue.url) == []


def test_local_attributes_and_purge() -> None:
    tm = TaskManager("local://q", queue_constructor=LocalQueue)
    tm.submit("a")
    assert tm.attributes()["ApproximateNumberOfMessages"] == 1
    assert tm.purge() is None
    assert tm.attributes()["ApproximateNumberOfMessages"] == 0


def test_notify_calls_the_callable_with_context_keyword() -> None:
    notify = Recorder()
    tm = TaskManager("local://q", notify=notify, queue_constructor=LocalQueue)
    error = ValueError("x")
    assert tm.notify(error, context={"k": "v"}) is None
    tm.notify(error)
    assert notify.calls == [(error, {"k": "v"}), (error, None)]


def test_notify_without_a_callable_does_nothing() -> None:
    tm = TaskManager("local://q", queue_constructor=LocalQueue)
    assert tm.notify(ValueError("x"), context={"k": "v"}) is None


# -- submit: the wire format ----------------------------------------------------


def test_submit_body_is_byte_for_byte_the_spec_example(sqs_server: Any, sqs_queue: Any) -> None:
    tm = sqs_server.task_manager(sqs_queue, sender_name="billing")
    response = tm.submit("task_name", foo="bar", date=date(2019, 1, 1))

    (message,) = raw_receive(sqs_server, sqs_queue.url)
    body = '{"task": "task_name", "kwargs": {"foo": "bar", "date": "2019-01-01"}}'
    assert message["Body"] == body
    assert message["MessageAttributes"] == {
        "service_name": {"StringValue": "billing", "DataType": "String"}
    }
    # The send_message response comes back as it is.
    assert response["MessageId"] == message["MessageId"]
    assert response["MD5OfMessageBody"] == hashlib.md5(body.encode()).hexdigest()
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_submit_without_sender_name_names_the_url(sqs_server: Any, sqs_queue: Any) -> None:
    tm = sqs_server.task_manager(sqs_queue)
    tm.submit("t", n=1)
    (message,) = raw_receive(sqs_server, sqs_queue.url)
    assert message["MessageAttributes"] == {
        "service_name": {"StringValue": "Unknown sender to: " + sqs_queue.url, "DataType": "String"}
    }


def test_submit_encoding_matches_json_dumps_with_str_default() -> None:
    class Thing:
        def __str__(self) -> str:
            return "thing!"

    tm = TaskManager("local://q", queue_constructor=LocalQueue)
    tm.submit("t", z=1, a=[1.5, None, True], text="é\n", money=Decimal("1.10"), obj=Thing())
    (message,) = tm.queue.receive_messages(WaitTimeSeconds=0)
    assert message.body == (
        '{"task": "t", "kwargs": {"z": 1, "a": [1.5, null, true], "text": "\\u00e9\\n", '
        '"money": "1.10", "obj": "thing!"}}'
    )
    assert message.message_attributes == {
        "service_name": {"StringValue": "Unknown sender to: local://q", "DataType": "String"}
    }


def test_every_submit_keyword_is_a_task_kwarg(sqs_server: Any, sqs_queue: Any) -> None:
    tm = sqs_server.task_manager(sqs_queue)
    kwargs = {"DelaySeconds": 600, "delay": 600, "sender_name": "x", "MessageGroupId": "g"}
    tm.submit("t", **kwargs)
    # Delivered at once (no option was applied), with every keyword in kwargs.
    (message,) = raw_receive(sqs_server, sqs_queue.url)
    assert json.loads(message["Body"]) == {"task": "t", "kwargs": kwargs}
    assert message["MessageAttributes"]["service_name"]["StringValue"].startswith("Unknown")


def test_submit_returns_the_local_send_message_response() -> None:
    tm = TaskManager("local://q", queue_constructor=LocalQueue)
    response = tm.submit("t")
    body = '{"task": "t", "kwargs": {}}'
    assert response["MD5OfMessageBody"] == hashlib.md5(body.encode()).hexdigest()


# -- task_generator --------------------------------------------------------------


def first(tm: TaskManager, **kwargs: Any) -> Tuple[Any, Any, Any]:
    return next(iter(tm.task_generator(**kwargs)))


WAIT_TIME_RANGE = "Invalid polling wait time {}; must be between 0 and 20"
SQS_TIMEOUT_RANGE = "Invalid sqs timeout {} seconds; must be between 0 and 12 hours"


@pytest.mark.parametrize(
    "name, value, expected",
    [
        *[("wait_time", value, WAIT_TIME_RANGE) for value in (-1, 21, 100)],
        *[("sqs_timeout", value, SQS_TIMEOUT_RANGE) for value in (-1, 43201)],
    ],
)
def test_limits_out_of_range(name: str, value: int, expected: str) -> None:
    tm = TaskManager("local://q", queue_constructor=LocalQueue)
    tm.submit("t")
    with pytest.raises(ValueError) as caught:
        first(tm, **{name: value})
    assert str(caught.value) == expected.format(value)


@pytest.mark.parametrize(
    "limits", [{"wait_time": 0}, {"wait_time": 20}, {"sqs_timeout": 0}, {"sqs_timeout": 43200}]
)
def test_bounds_are_allowed(limits: Dict[str, int]) -> None:
    tm = TaskManager("local://q", queue_constructor=LocalQueue)
    tm.submit("t", n=1)
    task, kwargs, message = first(tm, **limits)
    assert (task, kwargs) == ("t", {"n": 1})
    assert message.body == '{"task": "t", "kwargs": {"n": 1}}'


def test_each_poll_is_the_exact_receive_messages_call(sqs_server: Any, sqs_queue: Any) -> None:
    sqs = own_resource(sqs_server)
    seen = record_receives(sqs)
    tm = TaskManager(sqs_queue.url, sqs=sqs)
    tm.submit("a")
    tm.submit("b")

    assert first(tm)[0] == "a"
    assert first(tm, wait_time=0, sqs_timeout=43200)[0] == "b"
    assert seen == [
        {
            "QueueUrl": sqs_queue.url,
            "AttributeNames": ["All"],
            "MaxNumberOfMessages": 1,
            "WaitTimeSeconds": 20,
            "VisibilityTimeout": 20,
        },
        {
            "QueueUrl": sqs_queue.url,
            "AttributeNames": ["All"],
            "MaxNumberOfMessages": 1,
            "WaitTimeSeconds": 0,
            "VisibilityTimeout": 43200,
        },
    ]


def test_generator_yields_task_kwargs_and_the_received_message(
    sqs_server: Any, sqs_queue: Any
) -> None:
    tm = sqs_server.task_manager(sqs_queue)
    sent = tm.submit("job", x=[1, 2], y={"z": None})
    task, kwargs, message = first(tm, wait_time=0, sqs_timeout=30)
    assert (task, kwargs) == ("job", {"x": [1, 2], "y": {"z": None}})
    assert message.message_id == sent["MessageId"]
    # AttributeNames=["All"]: the system attributes came along.
    assert message.attributes["ApproximateReceiveCount"] == "1"
    # Held for sqs_timeout: nobody else gets it meanwhile.
    assert depth(sqs_server, sqs_queue.url) == (0, 1)


def test_empty_poll_logs_and_polls_again(
    sqs_server: Any, sqs_queue: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a queue that is empty at the first poll and holds a task at the second
    sqs = own_resource(sqs_server)
    polls: List[int] = []

    def after_receive(parsed: Dict[str, Any], **_: Any) -> None:
        polls.append(len(parsed.get("Messages", [])))
        if len(polls) == 1:
            sqs_server.task_manager(sqs_queue).submit("late")

    sqs.meta.client.meta.events.register("after-call.sqs.ReceiveMessage", after_receive)
    tm = TaskManager(sqs_queue.url, sqs=sqs)
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)

    # When the generator is asked for a task
    task, kwargs, _ = first(tm, wait_time=0)

    # Then it logged the empty poll once and went on to the next one
    assert (task, kwargs) == ("late", {})
    assert polls == [0, 1]
    waiting = [r for r in task_records(caplog) if r.msg == WAITING]
    assert len(waiting) == 1
    assert waiting[0].levelno == logging.INFO
    assert waiting[0].args == ()


MALFORMED = ["this is not json {", '{"kwargs": {"a": 1}}', '{"task": "no_kwargs"}']


def test_malformed_bodies_are_notified_logged_skipped_and_kept(
    sqs_server: Any, sqs_queue: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given three malformed messages followed by a good one
    for body in MALFORMED:
        sqs_server.client.send_message(QueueUrl=sqs_queue.url, MessageBody=body)
    notify = Recorder()
    tm = sqs_server.task_manager(sqs_queue, notify=notify)
    tm.submit("good", n=1)
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)

    # When the generator is asked for a task
    task, kwargs, message = first(tm, wait_time=0, sqs_timeout=60)

    # Then the good one is yielded ...
    assert (task, kwargs) == ("good", {"n": 1})
    # ... each bad one was notified with its body and attributes ...
    assert [type(error) for error, _ in notify.calls] == [
        json.JSONDecodeError,
        KeyError,
        KeyError,
    ]
    assert [error.args for error, _ in notify.calls[1:]] == [("task",), ("kwargs",)]
    failures = [r for r in task_records(caplog) if r.levelno == logging.ERROR]
    assert [r.msg for r in failures] == [DECODE_FAILED, FIELD_MISSING, FIELD_MISSING]
    for body, (error, context), record in zip(MALFORMED, notify.calls, failures):
        attributes = record.args[-1]
        assert attributes["ApproximateReceiveCount"] == "1"
        assert "SentTimestamp" in attributes
        assert context == {"body": body, **attributes}
        # ... and logged with logger.exception and the contract's arguments ...
        assert record.exc_info is not None and record.exc_info[1] is error
        assert record.args[-2] == body
    assert len(failures[0].args) == 2
    assert failures[1].args[0] is notify.calls[1][0]
    assert failures[2].args[0] is notify.calls[2][0]
    # ... and none was deleted: all four are in flight.
    assert depth(sqs_server, sqs_queue.url) == (0, 4)


# About 1,000 levels (2 KB): json.loads raises RecursionError, which is no ValueError.
# Too deep for json.loads on every Python (3.9-3.11 fail near 1,000 levels, 3.13 near 20,000).
TOO_DEEP = '{"task": "t", "kwargs": {"a": ' + "[" * 100_000 + "]" * 100_000 + "}}"


def test_a_body_too_deep_to_decode_is_malformed_not_fatal(
    sqs_server: Any, sqs_queue: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a body nested too deep for json, followed by a good message
    sqs_server.client.send_message(QueueUrl=sqs_queue.url, MessageBody=TOO_DEEP)
    notify = Recorder()
    tm = sqs_server.task_manager(sqs_queue, notify=notify)
    tm.submit("good", n=1)
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)

    # When the generator is asked for a task, it does not crash ...
    task, kwargs, message = first(tm, wait_time=0, sqs_timeout=60)

    # Then the good one is yielded, the deep one notified as a ValueError that
    # names the decoder's RecursionError, logged with the contract's line, and kept
    assert (task, kwargs) == ("good", {"n": 1})
    [(error, context)] = notify.calls
    assert isinstance(error, DecodeError) and isinstance(error, ValueError)
    assert isinstance(error.error, RecursionError) and "RecursionError" in str(error)
    assert context["body"] == TOO_DEEP
    [record] = [r for r in task_records(caplog) if r.levelno == logging.ERROR]
    assert record.msg == DECODE_FAILED and record.args[0] == TOO_DEEP
    # Logged while the decoder's own error is handled, as 0.0.11's line is.
    assert record.exc_info is not None and record.exc_info[1] is error.error
    assert depth(sqs_server, sqs_queue.url) == (0, 2)


@pytest.mark.parametrize("body", MALFORMED)
def test_malformed_log_calls_are_exactly_0_0_11s(body: str) -> None:
    # 0.0.11 tests patch the module's logger and check the call itself: exactly
    # these positional arguments, no keyword arguments, made inside the except
    # block of the decoder's own error (so logger.exception attaches its traceback).
    handled: List[Any] = []
    tm = TaskManager("local://q", notify=Recorder(), queue_constructor=LocalQueue)
    attributes = {"ApproximateReceiveCount": "1"}
    tm.queue.queue.put(LocalMessage(body, attributes, {}))
    tm.submit("good")
    with patch("sqstaskmaster.task_manager.logger") as log:
        log.exception.side_effect = lambda *args, **kwargs: handled.append(sys.exc_info()[1])
        assert first(tm, wait_time=0)[0] == "good"
    if body == MALFORMED[0]:
        log.exception.assert_called_once_with(DECODE_FAILED, body, attributes)
        assert isinstance(handled[0], json.JSONDecodeError)
    else:
        [call] = log.exception.call_args_list
        key_error = call.args[1]
        assert isinstance(key_error, KeyError)
        log.exception.assert_called_once_with(FIELD_MISSING, key_error, body, attributes)
        assert handled == [key_error]


def test_whatever_the_decoder_raises_is_malformed() -> None:
    # A LocalMessage can carry any object as its body; None makes json.loads raise TypeError.
    notify = Recorder()
    tm = TaskManager("local://q", notify=notify, queue_constructor=LocalQueue)
    tm.queue.queue.put(LocalMessage(None, {}, {}))
    tm.submit("good")
    assert first(tm, wait_time=0)[0] == "good"
    [(error, context)] = notify.calls
    assert isinstance(error, DecodeError) and isinstance(error.error, TypeError)
    assert context == {"body": None}


@pytest.mark.parametrize("body", MALFORMED + ["[1, 2]", '"text"', "null"])
def test_malformed_local_body_context_is_the_body(body: str) -> None:
    notify = Recorder()
    tm = TaskManager("local://q", notify=notify, queue_constructor=LocalQueue)
    tm.queue.send_message(MessageBody=body)
    tm.submit("good")
    assert first(tm, wait_time=0)[0] == "good"
    assert len(notify.calls) == 1
    assert notify.calls[0][1] == {"body": body}


def test_receive_errors_propagate(sqs_server: Any) -> None:
    tm = sqs_server.task_manager(sqs_server.endpoint_url + "/123456789012/no-such-queue")
    generator = tm.task_generator(wait_time=0)
    with pytest.raises(ClientError) as caught:
        next(generator)
    assert "NonExistentQueue" in str(caught.value) or "QueueDoesNotExist" in str(caught.value)


# -- integration over HTTP -------------------------------------------------------


def test_submit_generate_handle_and_the_message_is_gone(sqs_server: Any, sqs_queue: Any) -> None:
    producer = sqs_server.task_manager(sqs_queue, sender_name="producer")
    consumer = sqs_server.task_manager(sqs_queue)
    producer.submit("add", a=2, b=3)

    task, kwargs, message = first(consumer, wait_time=1, sqs_timeout=10)
    with TaskHandler(
        message, task, kwargs, sqs_timeout=10, alarm_timeout=2, hard_timeout=30
    ) as handler:
        handler.run()

    assert handler.result == 5
    assert handler.notified == []
    attributes = consumer.attributes()
    assert attributes["ApproximateNumberOfMessages"] == "0"
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "0"
    assert raw_receive(sqs_server, sqs_queue.url) == []


def test_failed_task_message_comes_back_after_its_visibility_timeout(
    sqs_server: Any, sqs_queue: Any
) -> None:
    tm = sqs_server.task_manager(sqs_queue)
    tm.submit("fail", reason="boom")

    task, kwargs, message = first(tm, wait_time=1, sqs_timeout=30)
    entered = time.monotonic()
    with TaskHandler(
        message, task, kwargs, sqs_timeout=3, alarm_timeout=1, hard_timeout=30
    ) as handler:
        handler.run()

    # The error was reported with the message's body and attributes, not raised.
    ((error, context),) = handler.notified
    assert isinstance(error, ValueError) and str(error) == "boom"
    assert context == {"body": message.body, **message.attributes}
    # Left in flight, not deleted; back once its 3 s visibility timeout ran out.
    assert depth(sqs_server, sqs_queue.url) == (0, 1)
    assert raw_receive(sqs_server, sqs_queue.url) == []
    task, kwargs, again = first(tm, wait_time=10, sqs_timeout=30)
    waited = time.monotonic() - entered
    assert (task, kwargs) == ("fail", {"reason": "boom"})
    assert again.message_id == message.message_id
    assert again.attributes["ApproximateReceiveCount"] == "2"
    assert 2.0 < waited < 12


# -- interoperability with 0.0.11 ------------------------------------------------


def test_our_submit_decodes_as_0_0_11_does(sqs_server: Any, sqs_queue: Any) -> None:
    tm = sqs_server.task_manager(sqs_queue, sender_name="ours")
    tm.submit("report", day=date(2020, 2, 29), ids=[3, 1], nested={"k": "é"})
    (message,) = raw_receive(sqs_server, sqs_queue.url)
    # 0.0.11 reads content["task"] and content["kwargs"] from json.loads(body).
    content = json.loads(message["Body"])
    assert (content["task"], content["kwargs"]) == (
        "report",
        {"day": "2020-02-29", "ids": [3, 1], "nested": {"k": "é"}},
    )


def test_a_0_0_11_message_sent_with_bare_boto3_is_consumed(sqs_server: Any, sqs_queue: Any) -> None:
    body = json.dumps({"task": "legacy", "kwargs": {"when": "2019-01-01", "n": 7}})
    sqs_server.client.send_message(
        QueueUrl=sqs_queue.url,
        MessageBody=body,
        MessageAttributes={
            "service_name": {"StringValue": "Unknown sender to: x", "DataType": "String"}
        },
    )
    tm = sqs_server.task_manager(sqs_queue)
    task, kwargs, message = first(tm, wait_time=1, sqs_timeout=10)
    assert (task, kwargs) == ("legacy", {"when": "2019-01-01", "n": 7})
    assert message.body == body
    with TaskHandler(
        message, "add", {"a": 1, "b": 1}, sqs_timeout=10, alarm_timeout=2, hard_timeout=30
    ):
        pass
    assert depth(sqs_server, sqs_queue.url) == (0, 0)


def test_a_stand_in_queue_with_only_receive_messages_still_feeds_the_generator() -> None:
    # 0.0.11 polls through queue.receive_messages(...) alone: a test's stand-in queue
    # without a boto3 client behind it works as it did there.
    class Message:
        body = '{"task": "t", "kwargs": {"a": 1}}'
        message_id = "m-1"
        attributes: dict = {}

    class StandIn:
        url = "stand-in"

        def receive_messages(self, **parameters: object) -> list:
            return [Message()]

    manager = TaskManager("local", queue_constructor=LocalQueue)
    manager.queue = StandIn()
    task, kwargs, message = next(manager.task_generator())
    assert (task, kwargs) == ("t", {"a": 1}) and message.message_id == "m-1"
