"""SPEC.md's "subclass and test-patch surface": 0.0.11 users' own tests patch and call these.

Each test is written with ``unittest.mock`` the way a 0.0.11 user's test
suite would use the names, so a rename or a bypass breaks it.
"""

from __future__ import annotations

import signal
import time
from queue import SimpleQueue
from typing import Any, List, Optional, Tuple
from unittest.mock import MagicMock, patch

import pytest
from botocore.exceptions import ClientError

from sqstaskmaster.errors import HardTimeoutError
from sqstaskmaster.local import LocalMessage, LocalQueue
from sqstaskmaster.message_handler import MessageHandler
from sqstaskmaster.queue_scale import Provisioner
from sqstaskmaster.sqs.facts import MAX_VISIBILITY_S, mark_received
from sqstaskmaster.task_manager import TaskManager

# Generous bound for tests; the precise overshoot is measured in benchmarks/.
SLACK_S = 0.5
HARD_TIMEOUT_TEXT = "Hit Hard Timeout for message handler"
URL = "https://sqs.us-east-1.amazonaws.com/123456789012/surface"


class Handler(MessageHandler):
    """A 0.0.11-style handler: ``work`` is the task, ``alive`` what running() says."""

    def __init__(self, message: Any, sqs: int, alarm: int, hard: int, work=None, alive=True):
        super().__init__(message, sqs, alarm, hard)
        self.work = work or (lambda: None)
        self.alive = alive
        self.notified: List[Tuple[BaseException, Any]] = []

    def run(self) -> Any:
        return self.work()

    def running(self) -> bool:
        return self.alive

    def notify(self, exception: BaseException, context: Optional[dict] = None) -> None:
        self.notified.append((exception, context))


def client_error() -> ClientError:
    return ClientError({"Error": {"Code": "ReceiptHandleIsInvalid", "Message": "x"}}, "Change")


def run_handler(handler: MessageHandler) -> float:
    started = time.monotonic()
    with handler:
        handler.run()
    return time.monotonic() - started


# -- _message, _start_time, _run_time ---------------------------------------------


def test_start_time_is_time_time_at_construction_and_run_time_counts_from_it():
    message = MagicMock()
    with patch("sqstaskmaster.message_handler.time") as mock_time:
        mock_time.time.return_value = 1000.0
        handler = Handler(message, 30, 25, 300)
        assert handler._message is message
        assert handler._start_time == 1000.0
        mock_time.time.return_value = 1042.5
        assert handler._run_time() == 42.5


# -- _handle_alarm, called directly ---------------------------------------------------


def test_handle_alarm_past_hard_timeout_raises_and_extends_nothing():
    message = MagicMock()
    handler = Handler(message, 30, 25, 300)
    handler._start_time -= 301
    with pytest.raises(TimeoutError, match=f"^{HARD_TIMEOUT_TEXT}$"):
        handler._handle_alarm(signal.SIGALRM, None)
    message.change_visibility.assert_not_called()


def test_handle_alarm_judges_the_hard_timeout_by_run_time():
    handler = Handler(MagicMock(), 30, 25, 300)
    with patch.object(Handler, "_run_time", return_value=300.5) as run_time:
        with pytest.raises(TimeoutError, match=HARD_TIMEOUT_TEXT):
            handler._handle_alarm(signal.SIGALRM, None)
    run_time.assert_called()


def test_handle_alarm_while_running_extends_through_extend_timeout():
    message = MagicMock()
    handler = Handler(message, 30, 25, 300)
    with patch.object(handler, "_extend_timeout", wraps=handler._extend_timeout) as extend:
        handler._handle_alarm(signal.SIGALRM, None)
    extend.assert_called_once_with(30)
    message.change_visibility.assert_called_once_with(VisibilityTimeout=30)


def test_handle_alarm_client_error_is_notified_and_logged_not_raised():
    message = MagicMock()
    error = client_error()
    message.change_visibility.side_effect = error
    handler = Handler(message, 30, 25, 300)
    with patch("sqstaskmaster.message_handler.logger") as logger:
        handler._handle_alarm(signal.SIGALRM, None)
    assert [e for e, _ in handler.notified] == [error]
    logger.exception.assert_called_once()


def test_handle_alarm_client_error_from_an_extend_timeout_override_is_caught():
    class Overriding(Handler):
        def _extend_timeout(self, seconds: int) -> None:
            raise client_error()

    handler = Overriding(MagicMock(), 30, 25, 300)
    handler._handle_alarm(signal.SIGALRM, None)
    assert [type(e) for e, _ in handler.notified] == [ClientError]


def test_handle_alarm_when_not_running_raises_stuck_error():
    message = MagicMock()
    handler = Handler(message, 30, 25, 300, alive=False)
    with pytest.raises(RuntimeError, match="^Handler is stuck on"):
        handler._handle_alarm(signal.SIGALRM, None)
    message.change_visibility.assert_not_called()


def test_handle_alarm_called_inside_the_block_rearms_the_heartbeat():
    # Given an entered handler whose first heartbeat is 1 s away
    message = MagicMock()
    handler = Handler(message, 3, 1, 60)
    with handler:
        time.sleep(0.6)
        # When user code heartbeats by hand
        handler._handle_alarm(signal.SIGALRM, None)
        # Then the next heartbeat is a full alarm_timeout later, as a fresh alarm would be
        remaining = signal.getitimer(signal.ITIMER_REAL)[0]
    assert 0.8 < remaining <= 1.0
    assert message.change_visibility.call_count == 2  # entry and the manual heartbeat


# -- every firing goes through _handle_alarm --------------------------------------


def test_every_signal_mode_firing_goes_through_handle_alarm():
    # Given _handle_alarm patched (still doing its work) and a task past its 2 s deadline
    handler = Handler(MagicMock(), 3, 1, 2, work=lambda: time.sleep(10))
    with patch.object(
        Handler, "_handle_alarm", autospec=True, side_effect=MessageHandler._handle_alarm
    ) as handle_alarm:
        elapsed = run_handler(handler)
    # Then the heartbeat at 1 s and the deadline at 2 s both came through it
    assert handle_alarm.call_count == 2
    assert all(c.args[:2] == (handler, signal.SIGALRM) for c in handle_alarm.call_args_list)
    assert isinstance(handler.error, HardTimeoutError)
    assert 2.0 <= elapsed < 2.0 + SLACK_S


def test_an_override_that_logs_then_calls_super_sees_each_heartbeat_and_the_deadline():
    seen: List[float] = []

    class Logging(Handler):
        def _handle_alarm(self, signum, frame):
            seen.append(self._run_time())
            super()._handle_alarm(signum, frame)

    handler = Logging(MagicMock(), 3, 1, 3, work=lambda: time.sleep(10))
    run_handler(handler)
    assert len(seen) == 3, seen  # heartbeats at 1 s and 2 s, the deadline at 3 s
    assert seen[-1] >= 3.0 - 0.01
    assert str(handler.error) == HARD_TIMEOUT_TEXT


def test_moving_start_time_back_makes_the_next_firing_raise_the_hard_timeout():
    # Given a 60 s hard timeout and a task that moves _start_time back two minutes
    holder: List[Handler] = []

    def work() -> None:
        holder[0]._start_time -= 120
        time.sleep(5)

    handler = Handler(MagicMock(), 3, 1, 60, work=work)
    holder.append(handler)
    # When it runs
    elapsed = run_handler(handler)
    # Then the next firing (the heartbeat due at 1 s) raised the hard timeout
    assert isinstance(handler.error, TimeoutError)
    assert str(handler.error) == HARD_TIMEOUT_TEXT
    assert elapsed < 1.0 + SLACK_S


# -- _extend_timeout ------------------------------------------------------------------


def test_extend_timeout_changes_the_message_visibility():
    message = MagicMock()
    Handler(message, 30, 25, 300)._extend_timeout(45)
    message.change_visibility.assert_called_once_with(VisibilityTimeout=45)


def test_entry_and_every_heartbeat_go_through_extend_timeout():
    message = MagicMock()
    handler = Handler(message, 3, 1, 60, work=lambda: time.sleep(2.5))
    with patch.object(
        Handler, "_extend_timeout", autospec=True, side_effect=MessageHandler._extend_timeout
    ) as extend:
        run_handler(handler)
    assert [c.args for c in extend.call_args_list] == [(handler, 3)] * 3
    assert message.change_visibility.call_count == 3


class RecordingIsolated(Handler):
    """An isolated handler whose _extend_timeout override records (in the parent)."""

    isolate = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extended: List[int] = []

    def _extend_timeout(self, seconds: int) -> None:
        self.extended.append(seconds)
        super()._extend_timeout(seconds)


def test_isolated_entry_and_heartbeats_go_through_extend_timeout():
    message = MagicMock()
    handler = RecordingIsolated(message, 3, 1, 60, work=lambda: time.sleep(2.5))
    run_handler(handler)
    assert handler.error is None
    assert len(handler.extended) >= 3  # entry, then heartbeats at 1 s and 2 s
    assert set(handler.extended) == {3}
    assert message.change_visibility.call_count == len(handler.extended)


def test_heartbeat_asks_for_sqs_timeout_and_the_12_hour_budget_caps_what_is_sent():
    # Given a message received 10 s short of SQS's 12-hour limit
    message = MagicMock()
    mark_received([message], time.time() - MAX_VISIBILITY_S + 10)
    handler = Handler(message, 30, 25, 300)
    with patch.object(handler, "_extend_timeout", wraps=handler._extend_timeout) as extend:
        handler._handle_alarm(signal.SIGALRM, None)
    # Then the override point sees sqs_timeout; SQS is asked for what is left
    extend.assert_called_once_with(30)
    [sent] = message.change_visibility.call_args_list
    assert 0 < sent.kwargs["VisibilityTimeout"] <= 10


# -- module-level boto3 -----------------------------------------------------------


def test_task_manager_uses_the_module_level_boto3():
    with patch("sqstaskmaster.task_manager.boto3") as boto3:
        manager = TaskManager(URL, sender_name="me")
    boto3.resource.assert_called_once_with("sqs")
    assert manager.sqs is boto3.resource.return_value
    boto3.resource.return_value.Queue.assert_called_once_with(URL)
    manager.submit("task_name", foo="bar")
    manager.queue.send_message.assert_called_once_with(
        MessageBody='{"task": "task_name", "kwargs": {"foo": "bar"}}',
        MessageAttributes={"service_name": {"StringValue": "me", "DataType": "String"}},
    )


def test_provisioner_uses_the_module_level_boto3():
    rule = {
        Provisioner.QUEUE_NAME: URL,
        Provisioner.SERVICE_NAME: "service",
        Provisioner.CLUSTER_NAME: "cluster",
        Provisioner.ACTIVE_SIZE: 3,
    }
    with patch("sqstaskmaster.queue_scale.boto3") as boto3:
        provisioner = Provisioner([rule])
    boto3.resource.assert_called_once_with("sqs")
    boto3.client.assert_called_once_with("ecs")
    boto3.resource.return_value.Queue.return_value.attributes = {"ApproximateNumberOfMessages": "2"}
    provisioner.run()
    boto3.client.return_value.update_service.assert_called_once_with(
        cluster="cluster", service="service", desiredCount=3
    )


# -- LocalMessage and LocalQueue --------------------------------------------------------


def test_local_message_change_visibility_takes_anything_and_logs_it():
    message = LocalMessage("body", {}, {})
    with patch("sqstaskmaster.local.logger") as logger:
        assert message.change_visibility(1, "two", VisibilityTimeout=30) is None
    logger.info.assert_called_once_with(
        "noop called with %s, %s", (1, "two"), {"VisibilityTimeout": 30}
    )


def test_local_queue_send_message_builds_a_local_message_and_puts_it_nowait():
    attributes = {"service_name": {"StringValue": "me", "DataType": "String"}}
    with (
        patch.object(LocalQueue, "queue") as shared,
        patch("sqstaskmaster.local.LocalMessage") as local_message,
    ):
        response = LocalQueue(URL).send_message(MessageBody="b", MessageAttributes=attributes)
    local_message.assert_called_once_with("b", {}, attributes)
    shared.put_nowait.assert_called_once_with(local_message.return_value)
    assert "MD5OfMessageBody" in response


def test_local_queue_queue_is_a_read_only_property_over_the_shared_queue():
    LocalQueue.local_queues.clear()
    try:
        local = LocalQueue(URL)
        assert isinstance(LocalQueue.__dict__["queue"], property)
        assert local.queue is LocalQueue.local_queues[URL]
        assert isinstance(local.queue, SimpleQueue)
        with pytest.raises(AttributeError):
            local.queue = SimpleQueue()  # type: ignore[misc]
    finally:
        LocalQueue.local_queues.clear()
