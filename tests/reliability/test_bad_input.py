"""Reliability 6: bad input at both ends gets a clear error or a notify, and work goes on.

Producer end (in this process): oversized bodies, kwargs JSON cannot encode,
invalid options and timeouts raise before anything is sent, with the
offending value in the message. Worker end (a worker subprocess): messages
that are not JSON, lack a field, have a task that is not a string or kwargs
that are not an object, name an unknown task, or carry kwargs the task
refuses are each notified (naming the message body) and never deleted, so
the redrive policy dead-letters them; a good message sent after them is done.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from sqstaskmaster.errors import EncodeError, InvalidTaskNameError, MessageTooLargeError
from sqstaskmaster.message_handler import MessageHandler
from sqstaskmaster.worker.loop import Worker

from .apps import work
from .harness import WorkerProcess, drain_bodies, event_directory, queue_depth, report

MAX_MESSAGE_SIZE = 1024
RET_USAGE = 2


class Handler(MessageHandler):
    def run(self) -> None: ...

    def running(self) -> bool:
        return True

    def notify(self, exception: BaseException, context: Any = None) -> None: ...


@pytest.mark.timeout(30)
def test_producer_refuses_bad_input_before_sending(sqs_server: Any) -> None:
    started = time.monotonic()
    queue = sqs_server.make_queue(attributes={"MaximumMessageSize": str(MAX_MESSAGE_SIZE)})
    tm = sqs_server.task_manager(queue)
    blob = "x" * (MAX_MESSAGE_SIZE + 1)
    errors: List[BaseException] = []

    def refused(error_type: type, call: Any, *texts: str) -> None:
        with pytest.raises(error_type) as caught:
            call()
        for text in texts:
            assert text in str(caught.value), (text, str(caught.value))
        errors.append(caught.value)

    # Oversized, one message or one entry of a batch: nothing is sent.
    refused(
        MessageTooLargeError,
        lambda: tm.submit_with("work", {"blob": blob}),
        "'work'",
        f"MaximumMessageSize of {MAX_MESSAGE_SIZE} bytes",
    )
    refused(
        MessageTooLargeError,
        lambda: tm.submit_batch([("work", {"key": "fine"}), ("work", {"blob": blob})]),
        "entry 1 of the batch",
    )
    circular: Dict[str, Any] = {}
    circular["self"] = circular
    refused(EncodeError, lambda: tm.submit_with("work", {"loop": circular}), "'work'")
    refused(EncodeError, lambda: tm.submit_with("work", {"x": float("nan")}), "kwargs['x'] is nan")
    refused(InvalidTaskNameError, lambda: tm.submit_with(5, {}), "Task name 5")
    refused(ValueError, lambda: tm.submit_with("work", {}, delay_seconds=901), "901")
    assert queue_depth(sqs_server, queue.url) == 0
    # 0.0.11's submit() does not check sizes: SQS itself refuses the message.
    from botocore.exceptions import ClientError

    refused(ClientError, lambda: tm.submit("work", blob=blob), "InvalidParameterValue")
    # Invalid timeouts, on the consumer side's entry points.
    refused(ValueError, lambda: tm.task_generator(wait_time=21), "21")
    refused(ValueError, lambda: tm.task_generator(sqs_timeout=43201), "43201")
    refused(
        ValueError,
        lambda: Handler(None, sqs_timeout=6, alarm_timeout=5, hard_timeout=9),
        "Alarm timeout 5",
        "sqs timeout 6",
    )
    refused(
        ValueError,
        lambda: Handler(None, sqs_timeout=6, alarm_timeout=2, hard_timeout=0),
        "Hard timeout",
    )
    refused(ValueError, lambda: Worker(sqs_timeout=50000).check(), "50000")
    refused(ValueError, lambda: Worker().register("work", work, hard_timeout=-1), "-1")
    assert queue_depth(sqs_server, queue.url) == 0
    # Still usable afterwards.
    tm.submit_with("work", {"key": "after"})
    assert queue_depth(sqs_server, queue.url) == 1
    report(
        "bad_input[producer]",
        cases=len(errors),
        refused=len(errors),
        time_s=f"{time.monotonic() - started:.1f}",
    )


# Body -> the type of the error the worker must notify for it.
BAD_MESSAGES = {
    "not json": "JSONDecodeError",
    '{"task": "work"}': "KeyError",
    '["work", {}]': "TypeError",
    '{"task": 7, "kwargs": {}}': "InvalidTaskMessageError",
    '{"task": "work", "kwargs": [1]}': "InvalidTaskMessageError",
    '{"task": "work", "kwargs": "key=x"}': "InvalidTaskMessageError",
    '{"task": "no_such_task", "kwargs": {}}': "UnknownTaskError",
    '{"task": "work", "kwargs": {"key": "b1", "bogus": 1}}': "TypeError",
    '{"task": "poison_class", "kwargs": {"bogus": 1}}': "TypeError",
    '{"task": "takes_number", "kwargs": {"key": "b2", "number": "seven"}}': "TypeError",
    # 100,000 levels: json.loads raises RecursionError on any Python (SPEC.md defect 9).
    '{"task": "work", "kwargs": {"a": ' + "[" * 100_000 + "]" * 100_000 + "}}": "DecodeError",
}


@pytest.mark.timeout(60)
def test_worker_notifies_bad_messages_and_goes_on(
    sqs_server: Any, worker_args: List[str], tmp_path: Path
) -> None:
    events_dir, events = event_directory(tmp_path)
    queue = sqs_server.make_queue(dead_letter=True, max_receive_count=1)
    for body in BAD_MESSAGES:
        queue.queue.send_message(MessageBody=body)
    sqs_server.task_manager(queue).submit("work", key="good")
    started = time.monotonic()
    # Settings the worker refuses: a clear error, exit code 2, nothing consumed.
    refused = WorkerProcess(
        sqs_server,
        queue.url,
        events_dir,
        "--sqs-timeout",
        "3",
        "--alarm-timeout",
        "2",
        log_name="refused",
        settings=worker_args,
    )
    try:
        refused_code = refused.wait(20)
    finally:
        refused.close()
    worker = WorkerProcess(
        sqs_server,
        queue.url,
        events_dir,
        "--signal-mode",
        "--poll-wait",
        "1",
        "--burst-idle",
        "3",
        "--retry-first",
        "1",
        "--retry-factor",
        "1",
        settings=worker_args,
    )
    try:
        exit_code = worker.wait(45)
    finally:
        worker.close()
    elapsed = time.monotonic() - started
    notified = events.notified()
    by_body: Dict[Any, List[str]] = {}
    for entry in notified:
        by_body.setdefault(entry.get("body"), []).append(entry["type"])
    dead = drain_bodies(queue.dead_letter_queue)
    done = events.counts("done")
    report(
        "bad_input[worker]",
        worker_args=worker_args,
        bad_messages=len(BAD_MESSAGES),
        notified=sum(1 for body in BAD_MESSAGES if by_body.get(body)),
        dead_lettered=len(dead),
        good_done=done["good"],
        lost=1 - min(done["good"], 1),
        time_s=f"{elapsed:.1f}",
    )
    assert refused_code == RET_USAGE
    assert "alarm_timeout 2 s must be at least 2 s under sqs_timeout 3 s" in refused.log
    assert exit_code == 0
    assert done["good"] == 1
    for body, error_type in BAD_MESSAGES.items():
        assert error_type in by_body.get(body, []), (body, by_body.get(body))
    texts = " ".join(entry["error"] for entry in notified)
    assert "'no_such_task'" in texts and "got task 7 (int)" in texts
    assert sorted(dead) == sorted(BAD_MESSAGES)
    assert queue_depth(sqs_server, queue.url) == 0
    # Nothing bad ran to completion; only one reached its task's code, which refused it.
    assert set(done) == {"good"}
    assert set(events.counts("start")) == {"good", "b2"}
    assert "unknown task 'no_such_task'" in worker.log
