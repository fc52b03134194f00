"""The worker's side of the task status table: items through each state, progress, cancel.

Workers run in this process or as ``python -m sqstaskmaster worker
worker_apps:status_app`` subprocesses; the table is a real DynamoDB table on
the test server (moto's; under LocalStack, the DynamoDB endpoint the suite is
given). Faults are injected in the worker's DynamoDB client.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List, Optional

import pytest
import worker_apps as apps
from worker_process import traces, wait_for

from sqstaskmaster import TaskContext
from sqstaskmaster.cli.commands import main
from sqstaskmaster.errors import TaskCancelled
from sqstaskmaster.ops import status_requests
from sqstaskmaster.ops.status_items import MAX_NOTE_CHARS, from_item, key
from sqstaskmaster.run.checkpoint_box import CheckpointBox
from sqstaskmaster.worker.loop import Worker
from sqstaskmaster.worker.retry import RetryPolicy

STATUS_APP = "worker_apps:status_app"


class Recorder:
    def __init__(self) -> None:
        self.errors: List[BaseException] = []

    def __call__(self, exception: BaseException, context: Optional[Dict[str, Any]] = None) -> None:
        self.errors.append(exception)


@pytest.fixture
def table(status_table: Any, sqs_server: Any) -> Any:
    """A fresh status table (a StatusTable) on the test server, and its ``endpoint``."""
    status_table.endpoint = sqs_server.dynamodb_endpoint_url
    return status_table


def item(table: Any, message_id: str) -> Optional[Dict[str, Any]]:
    found = table.client.get_item(TableName=table.name, Key=key(message_id), ConsistentRead=True)
    return from_item(found["Item"]) if "Item" in found else None


def cancel_by_command(table: Any, message_id: str, capsys: Any) -> str:
    """``sqstaskmaster cancel ID --status-table NAME``; what it printed."""
    code = main(
        ["cancel", message_id, "--status-table", table.name, "--endpoint-url", table.endpoint]
    )
    assert code == 0
    return str(capsys.readouterr().out)


def in_process_worker(table: Any, notify: Any = None, **settings: Any) -> Worker:
    defaults: Dict[str, Any] = dict(poll_wait_s=1, burst_idle_s=2, sqs_timeout=6, prefetch=10)
    defaults.update(settings)
    worker = Worker(notify=notify, status_table=table, **defaults)
    for name, target, hard_timeout in (
        ("answer", apps.answer, None),
        ("fail", apps.fail, None),
        ("stuck", apps.sleep, 1),
        ("progressing", apps.progressing, None),
        ("snappy", apps.sleep, 2),
    ):
        worker.register(name, target, hard_timeout=hard_timeout)
    return worker


def submit(response: Any) -> str:
    """The message id of a TaskManager.submit response."""
    return str(response["MessageId"])


def status_worker(start_worker: Any, queue: Any, table: Any, *args: str) -> Any:
    """``sqstaskmaster worker worker_apps:status_app --status-table NAME ARGS`` on ``queue``."""
    return start_worker(queue.url, "--status-table", table.name, *args, app=STATUS_APP)


def send(server: Any, queue: Any, task: str, **kwargs: Any) -> str:
    """Submit one task to ``queue``; its message id."""
    return submit(server.task_manager(queue).submit(task, **kwargs))


# -- progress ---------------------------------------------------------------------------


def test_progress_is_checked_clamped_and_kept_for_the_worker(caplog: Any) -> None:
    context = TaskContext("m1", task="train")
    assert context.reported_progress() is None
    context.progress(0.25, "epoch 1 of 4")
    assert context.reported_progress() == (0.25, "epoch 1 of 4")
    with caplog.at_level(logging.WARNING):
        context.progress(7, "x" * 500)
    fraction, note = context.reported_progress() or (None, "")
    assert fraction == 1.0 and len(note) == MAX_NOTE_CHARS and note.endswith("\u2026")
    assert "outside 0 to 1; clamped" in caplog.text and "message m1" in caplog.text
    for wrong in (float("nan"), float("inf"), "half"):
        with pytest.raises(ValueError):
            context.progress(wrong)  # type: ignore[arg-type]
    assert context.reported_progress() == (1.0, note)  # a refused value changes nothing


def test_progress_in_the_shared_box_wins_over_the_worker_side_copy() -> None:
    box = CheckpointBox()
    box.clear()
    assert box.progress() is None
    box.set_progress(0.5, "h\u00e9lf way")
    box.set_progress(0.75, "three quarters")
    assert box.progress() == (0.75, "three quarters")
    context = TaskContext("m2", task="train")
    context.progress(0.1, "worker side")
    assert context.reported_progress(box) == (0.75, "three quarters")
    box.clear()
    assert context.reported_progress(box) == (0.1, "worker side")


# -- the item's life ----------------------------------------------------------------------


@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "signal-mode"])
def test_each_ended_task_has_its_item_with_state_worker_result_and_error(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, table: Any, isolate: bool
) -> None:
    worker = in_process_worker(table, isolate=isolate, retry=None)
    worker.connect(sqs_queue.url, sqs=sqs_server.sqs)
    manager = sqs_server.task_manager(sqs_queue)
    ids = {
        "done": submit(
            manager.submit("answer", key="a", value={"accuracy": 0.93, "epochs": [1, 2]})
        ),
        "big": submit(manager.submit("answer", key="b", value="x" * 5000)),
        "failed": submit(manager.submit("fail", key="f")),
        "timed_out": submit(manager.submit("stuck", key="s", seconds=30)),
        "refused": submit(manager.submit("no_such_task", key="n")),
    }
    worker.run_single()
    items = {name: item(table, message_id) for name, message_id in ids.items()}
    for name, found in items.items():
        assert found is not None, name
        assert found["queue"] == sqs_queue.name and found["host"] == socket.gethostname()
        assert found["receive_count"] == 1 and found["expires_at"] > time.time() + 13 * 86400
    assert items["done"]["state"] == "done" and items["done"]["task"] == "answer"
    assert items["done"]["result"] == '{"accuracy":0.93,"epochs":[1,2]}'
    assert items["done"]["ended_at"] >= items["done"]["started_at"]
    assert "result" not in items["big"] and "over 4096" in items["big"]["result_dropped"]
    assert items["failed"]["state"] == "failed"
    assert items["failed"]["error_type"] == "RuntimeError"
    assert "fails on purpose" in items["failed"]["error"]
    assert items["timed_out"]["state"] == "timed_out"
    assert items["timed_out"]["error_type"] == "HardTimeoutError"
    assert items["refused"]["state"] == "refused" and items["refused"]["task"] == "no_such_task"
    assert items["refused"]["error_type"] == "UnknownTaskError"
    assert "kwargs" not in items["done"]  # no kwargs unless asked for
    # Short tasks cost a fraction of a request each: one BatchGetItem per poll, and
    # their items in BatchWriteItems (the 1 s task's start may be written too).
    assert worker._status.requests <= 8, worker._status.requests


def test_a_long_task_is_running_with_heartbeats_then_done_and_kwargs_on_request(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, table: Any, start_worker: Any
) -> None:
    worker = status_worker(start_worker, sqs_queue, table, "--status-kwargs", "--sqs-timeout", "3")
    message_id = send(sqs_server, sqs_queue, "progressing", key="p", steps=8, step_s=0.5)
    running = wait_for(
        lambda: (
            (item(table, message_id) or {}).get("state") == "running" and item(table, message_id)
        ),
        20,
        "the running item",
    )
    assert running["task"] == "progressing" and running["pid"] == worker.pid
    assert '"steps": 8' in running["kwargs"] and "ended_at" not in running
    beats = {running["heartbeat_at"]}
    progress = set()

    def later() -> bool:
        found = item(table, message_id) or {}
        beats.add(found.get("heartbeat_at"))
        progress.add((found.get("progress"), found.get("progress_note")))
        return found.get("state") == "done"

    wait_for(later, 30, "the done item", step_s=0.2)
    done = item(table, message_id)
    assert done is not None and done["result"] == '"8 steps"'
    assert done["progress"] == 1 and done["progress_note"] == "step 8 of 8"
    assert len(beats - {None}) >= 2  # heartbeats renewed the item while it ran
    seen = [p for p, _ in progress if p is not None and 0 < p < 1]
    assert seen, progress  # progress from the isolated child reached the table while it ran
    assert worker.stop() == 0


def test_a_continued_task_points_at_its_continuation_and_back(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, table: Any
) -> None:
    worker = in_process_worker(table, continue_after_s=1, shutdown_grace_s=2)
    worker.register("stepper", apps.stepper, resumable=True, hard_timeout=60)
    worker.connect(sqs_queue.url, sqs=sqs_server.sqs)
    first = send(sqs_server, sqs_queue, "stepper", key="c", total=6, step_s=0.5)
    worker.run_single()
    chain = [item(table, first)]
    while chain[-1] is not None and chain[-1]["state"] == "continued":
        chain.append(item(table, chain[-1]["continued_as"]))
    assert chain[-1] is not None and chain[-1]["state"] == "done", chain
    assert len(chain) >= 3
    for number, later in enumerate(chain[1:], start=1):
        assert later["first_message_id"] == first and later["continuation"] == number


def test_a_task_stopped_by_shutdown_is_handed_back(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, table: Any, start_worker: Any
) -> None:
    worker = status_worker(start_worker, sqs_queue, table, "--shutdown-grace", "1")
    message_id = send(
        sqs_server, sqs_queue, "until_stopped", key="h", seconds=60, cooperative=False
    )
    wait_for(lambda: traces(trace_dir, "start", "h"), 20, "the task started")
    assert worker.stop() == 0
    found = item(table, message_id)
    assert found is not None and found["state"] == "handed_back", found


def test_submit_then_wait_for_the_result_without_another_service(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, table: Any, start_worker: Any
) -> None:
    worker = status_worker(start_worker, sqs_queue, table)
    manager = sqs_server.task_manager(sqs_queue)
    quick = submit(manager.submit("answer", key="q", value={"rows": 3}))
    slow = submit(manager.submit("progressing", key="w", steps=3, step_s=0.5))
    status = table.wait(quick, timeout=30, poll_s=0.2)
    assert status.state == "done" and status.value == {"rows": 3}
    status = table.wait(slow, timeout=30, poll_s=0.2)
    assert status.state == "done" and status.value == "3 steps" and status.progress == 1
    assert status.host == socket.gethostname() and status.receive_count == 1
    assert worker.stop() == 0


# -- cancel -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode,cooperative,how",
    [
        ("--isolate", False, "python"),
        ("--signal-mode", False, "command"),
        ("--isolate", True, "python"),
    ],
    ids=["isolated", "signal-mode", "isolated-returns"],
)
def test_cancel_stops_a_running_task_within_a_heartbeat_and_the_grace_and_deletes_it(
    sqs_server: Any,
    sqs_queue: Any,
    trace_dir: Path,
    table: Any,
    start_worker: Any,
    mode: str,
    cooperative: bool,
    how: str,
    capsys: Any,
    sqs_environment: Any,  # the command's region and credentials
) -> None:
    worker = status_worker(
        start_worker, sqs_queue, table, mode, "--sqs-timeout", "3", "--shutdown-grace", "1"
    )
    message_id = send(
        sqs_server, sqs_queue, "until_stopped", key="k", seconds=60, cooperative=cooperative
    )
    wait_for(lambda: (item(table, message_id) or {}).get("state") == "running", 20, "running")
    cancelled_at = time.monotonic()
    if how == "python":
        table.cancel(message_id, by="tester@laptop")
    else:
        said = cancel_by_command(table, message_id, capsys)
        assert "Cancel requested for message" in said and "stop_requested" in said, said
    wait_for(lambda: (item(table, message_id) or {}).get("state") == "cancelled", 20, "cancelled")
    took = time.monotonic() - cancelled_at
    # A heartbeat (1 s), the grace (1 s), the final write (up to 0.25 s) and this poll.
    assert took < 6, took
    assert traces(trace_dir, "stop_seen", "k")  # the task saw stop_requested
    assert not traces(trace_dir, "done", "k")
    found = item(table, message_id)
    assert found is not None and found["error_type"] == "TaskCancelled"
    assert found["cancel_requested_by"] in found["error"]
    # Deleted: nothing comes back, nothing is retried.
    time.sleep(3.5)  # past the visibility the message had
    assert sqs_queue.queue.receive_messages(WaitTimeSeconds=1) == []
    assert worker.stop() == 0
    assert "cancelled" in worker.log and "TaskCancelled" in worker.log
    assert len(traces(trace_dir, "start", "k")) == 1


def test_a_message_cancelled_before_any_worker_received_it_is_deleted_unrun(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, table: Any
) -> None:
    notify = Recorder()
    worker = in_process_worker(table, notify=notify)
    worker.connect(sqs_queue.url, sqs=sqs_server.sqs)
    manager = sqs_server.task_manager(sqs_queue)
    doomed = submit(manager.submit("answer", key="doomed", value=1))
    kept = submit(manager.submit("answer", key="kept", value=2))
    table.cancel(doomed, by="tester@laptop")
    worker.run_single()
    assert not traces(trace_dir, "done", "doomed") and traces(trace_dir, "done", "kept")
    assert (item(table, doomed) or {}).get("state") == "cancelled"
    assert (item(table, kept) or {}).get("state") == "done"
    assert [type(error) for error in notify.errors] == [TaskCancelled]
    assert sqs_queue.queue.receive_messages(WaitTimeSeconds=0) == []
    # The mark stays: were the delete lost, the message would be deleted again.
    assert (item(table, doomed) or {}).get("cancel_requested_by") == "tester@laptop"


def test_a_message_cancelled_while_it_waited_in_the_prefetch_is_deleted_unrun(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, table: Any, start_worker: Any
) -> None:
    worker = status_worker(start_worker, sqs_queue, table, "--prefetch", "2")
    ids = {key: send(sqs_server, sqs_queue, "sleep", key=key, seconds=2.5) for key in ("x", "y")}
    first = wait_for(
        lambda: [key for key in ids if traces(trace_dir, "start", key)], 20, "a task started"
    )[0]
    other = "y" if first == "x" else "x"
    time.sleep(1.2)  # the poll's look at the other is now old
    table.cancel(ids[other], by="tester@laptop")
    wait_for(lambda: (item(table, ids[other]) or {}).get("state") == "cancelled", 20, "cancelled")
    wait_for(lambda: traces(trace_dir, "done", first), 20, "the first task done")
    assert not traces(trace_dir, "start", other)
    assert worker.stop() == 0
    assert "cancelled before it ran" in worker.log


def test_a_cancel_that_comes_as_a_task_continues_reaches_its_continuation(
    sqs_server: Any, table: Any
) -> None:
    from sqstaskmaster.worker.status_outbox import Outbox
    from sqstaskmaster.worker.status_record import TaskRecord

    table.cancel("first-message", by="tester@laptop")
    outbox = Outbox(table.name, table.client, lambda record: False)
    record = TaskRecord("first-message", {"message_id": "first-message", "task": "t"}, 1.0)
    record.start_sent = True
    fields = {"state": "continued", "continued_as": "second-message", "updated_at": time.time()}
    outbox.update(record, fields, (), True)
    outbox.send()
    assert (item(table, "first-message") or {}).get("state") == "continued"
    following = item(table, "second-message") or {}
    assert following.get("cancel_requested_by") == "tester@laptop"


# -- a table that fails or hangs ------------------------------------------------------------


OUTCOME = re.compile(r"^task (\S+) message \S+ receive \d+: ([a-z ]+) in [\d.]+ s")


def outcomes(caplog: Any) -> List[str]:
    found = []
    for record in caplog.records:
        match = OUTCOME.match(record.getMessage())
        if match:
            found.append(f"{match.group(1)}: {match.group(2)}")
    return sorted(found)


def run_batch(sqs_server: Any, queue: Any, table: Any, caplog: Any) -> List[str]:
    # A failed task comes back after a minute: each task runs once in the batch.
    never_soon = RetryPolicy(first_s=60, jitter="none")
    worker = in_process_worker(table, retry=never_soon, burst_idle_s=1)
    worker.connect(queue.url, sqs=sqs_server.sqs)
    manager = sqs_server.task_manager(queue)
    submit(manager.submit("answer", key="a", value=1))
    submit(manager.submit("fail", key="f"))
    submit(manager.submit("stuck", key="s", seconds=30))
    submit(manager.submit("progressing", key="p", steps=3, step_s=0.5))
    submit(manager.submit("snappy", key="n", seconds=0.5))  # 2 s hard timeout
    caplog.clear()
    with caplog.at_level(logging.INFO):
        worker.run_single()
    return outcomes(caplog)


@pytest.fixture
def black_hole() -> Iterator[str]:
    """An endpoint that accepts connections and never answers (a hung table)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


def faulty_client(table: Any, fault: str, black_hole: str, sqs_server: Any) -> Any:
    if fault == "hangs":
        return sqs_server.session.client(
            "dynamodb", endpoint_url=black_hole, config=status_requests.writer_client_config()
        )
    from botocore.exceptions import ClientError, EndpointConnectionError

    client = sqs_server.session.client(
        "dynamodb", endpoint_url=table.endpoint, config=status_requests.writer_client_config()
    )

    def inject(**_: Any) -> None:
        if fault == "slow":  # answers, each time just within the read timeout
            time.sleep(status_requests.READ_TIMEOUT_S - 0.3)
            return
        if fault == "raises":
            raise EndpointConnectionError(endpoint_url=table.endpoint)
        raise ClientError(
            {"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "UpdateItem"
        )

    client.meta.events.register("before-send.dynamodb", inject)
    return client


@pytest.mark.parametrize("fault", ["raises", "throttles", "hangs", "slow"])
def test_a_table_that_fails_or_hangs_leaves_every_outcome_as_without_a_table(
    sqs_server: Any, trace_dir: Path, table: Any, caplog: Any, black_hole: str, fault: str
) -> None:
    started = time.monotonic()
    without = run_batch(sqs_server, sqs_server.make_queue(), None, caplog)
    baseline = time.monotonic() - started
    broken = SimpleNamespace(
        name=table.name, client=faulty_client(table, fault, black_hole, sqs_server)
    )
    started = time.monotonic()
    with_fault = run_batch(sqs_server, sqs_server.make_queue(), broken, caplog)
    took = time.monotonic() - started
    expected = ["answer: done", "fail: failed", "stuck: timed out", "progressing: done"]
    assert with_fault == without == sorted([*expected, "snappy: done"])
    firsts = [r.getMessage() for r in caplog.records if "tasks are not affected" in r.getMessage()]
    assert firsts or fault == "slow", "the failure was not logged"
    kinds = [re.findall(r"Failures of this kind \((\w+)\)", text)[0] for text in firsts]
    assert len(kinds) == len(set(kinds)), firsts  # each kind logged once
    # At most one hung or slow look (two tries of 1 s + 2 s), then the table is left alone.
    assert took < baseline + 10, (took, baseline)


# -- without a table; metrics ----------------------------------------------------------------


def test_without_a_table_no_dynamodb_client_is_made(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, monkeypatch: Any
) -> None:
    import botocore.session

    made: List[str] = []
    create_client = botocore.session.Session.create_client

    def record(self: Any, service_name: str, *args: Any, **kwargs: Any) -> Any:
        made.append(service_name)
        return create_client(self, service_name, *args, **kwargs)

    monkeypatch.setattr(botocore.session.Session, "create_client", record)
    worker = in_process_worker(None)
    worker.connect(sqs_queue.url, sqs=sqs_server.sqs)
    sqs_server.task_manager(sqs_queue).submit("answer", key="plain", value=1)
    assert worker.run_single() == 0
    assert traces(trace_dir, "done", "plain") and worker._status is None
    assert "dynamodb" not in made, made


def test_a_status_table_given_with_slow_timeouts_is_written_through_a_bounded_client(
    sqs_server: Any, sqs_queue: Any, table: Any
) -> None:
    from sqstaskmaster import StatusTable
    from sqstaskmaster.worker.status import writer_for

    slow = StatusTable(table.name, session=sqs_server.session, endpoint_url=table.endpoint)
    assert slow.client.meta.config.read_timeout == 60  # botocore's default
    worker = in_process_worker(slow)
    worker.queue_url = sqs_queue.url
    writer = writer_for(worker)
    assert writer is not None and writer.name == table.name
    config = writer.client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (1.0, 2.0)
    assert writer.client.meta.endpoint_url == table.endpoint


def test_cancelled_outcomes_and_table_failures_are_counted(
    sqs_server: Any, sqs_queue: Any, trace_dir: Path, table: Any
) -> None:
    from test_metrics import scrape, tasks_total, value

    from sqstaskmaster.ops import metrics
    from sqstaskmaster.testing import free_port

    port = free_port()
    worker = in_process_worker(table, isolate=False, metrics_port=port)
    seen: List[Any] = []
    worker.register("probe", lambda: seen.append(scrape(port)))
    worker.connect(sqs_queue.url, sqs=sqs_server.sqs)
    manager = sqs_server.task_manager(sqs_queue)
    table.cancel(submit(manager.submit("answer", key="gone", value=1)), by="tester")
    manager.submit("probe")
    try:
        worker.burst_tasks = 1  # the probe; the cancelled message is deleted unrun
        worker.run_single()
        assert seen and seen[-1] is not None
        assert tasks_total(seen[-1]).get(("answer", "cancelled")) == 1
        # Then the table breaks: its failures are counted while the tasks go on.
        worker.settings = worker.settings.replace(
            status_table=SimpleNamespace(
                name=table.name, client=faulty_client(table, "raises", "", sqs_server)
            ),
            burst_tasks=2,
        )
        manager.submit("answer", key="after", value=2)
        manager.submit("probe")
        worker.tasks_run = 0
        worker.run_single()
    finally:
        metrics.stop_serving()
    assert traces(trace_dir, "done", "after") and not traces(trace_dir, "done", "gone")
    assert len(seen) == 2 and seen[-1] is not None
    assert value(seen[-1], "sqstaskmaster_status_table_failures_total", kind="unreachable") >= 1
