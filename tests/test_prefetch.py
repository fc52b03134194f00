"""Prefetch and batched deletes: fewer requests per task, and no promise bent.

The worker runs in this process on moto's server, in both execution
strategies. What the worker sends is counted with botocore's own event hooks
on a resource of the test's (real requests, nothing of ours replaced). The
tasks observe the queue themselves, with clients of their own, so no thread
of the test exists where an isolated task forks.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

import boto3
import pytest

from sqstaskmaster.worker.loop import Worker
from sqstaskmaster.worker.settings import WorkerSettings

MODES = pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "signal-mode"])
# Each way a task can run: a fresh fork, a reused child, in the worker (signal mode).
RUNS = pytest.mark.parametrize(
    "run",
    [{"isolate": True}, {"isolate": True, "max_tasks_per_child": 10}, {"isolate": False}],
    ids=["isolated", "reused-child", "signal-mode"],
)


class Calls:
    """The SQS actions a resource sent, and their parameters (a botocore event)."""

    def __init__(self, sqs: Any) -> None:
        self.actions: Counter = Counter()
        self.params: Dict[str, List[Dict[str, Any]]] = {}
        sqs.meta.client.meta.events.register("before-parameter-build.sqs", self._seen)

    def _seen(self, model: Any, params: Dict[str, Any], **_: Any) -> None:
        self.actions[model.name] += 1
        self.params.setdefault(model.name, []).append(dict(params))


def counted_resource(sqs_server: Any) -> Any:
    return sqs_server.session.resource("sqs", endpoint_url=sqs_server.endpoint_url)


def client_for(endpoint: str) -> Any:
    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    ).client("sqs", endpoint_url=endpoint)


def not_visible(endpoint: str, queue_url: str) -> int:
    attributes = client_for(endpoint).get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessagesNotVisible"])


def visible_now(endpoint: str, queue_url: str) -> int:
    """How many messages a second consumer receives now (handed straight back)."""
    client = client_for(endpoint)
    messages = client.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=0
    ).get("Messages", [])
    return len(messages)


# -- tasks (module level: an isolated child finds them by fork) ---------------------


def noop(**_: Any) -> None:
    pass


def record(directory: str, name: str, **fields: Any) -> None:
    path = Path(directory) / f"{name}.{os.getpid()}.{time.monotonic_ns()}.json"
    path.write_text(json.dumps(fields))


def records(directory: Path, name: str) -> List[Dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(directory.glob(f"{name}.*.json"))]


def probe(directory: str, endpoint: str, queue_url: str, seconds: float) -> None:
    """The first run watches, for ``seconds``, whether a second consumer gets any message."""
    marker = Path(directory) / "probing"
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        record(directory, "ran")
        return
    seen = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen += visible_now(endpoint, queue_url)
        time.sleep(0.2)
    record(directory, "probe", seen=seen)
    record(directory, "ran")


def observe_delete(directory: str, endpoint: str, queue_url: str) -> None:
    """Runs after a no-op: how long until the no-op's message is deleted, while this runs."""
    started = time.monotonic()
    deleted_after = None
    while time.monotonic() - started < 3.0:
        if not_visible(endpoint, queue_url) == 1:  # only this task's message is in flight
            deleted_after = time.monotonic() - started
            break
        time.sleep(0.02)
    ran_first = (Path(directory) / "noop-ran").exists()
    record(directory, "observed", deleted_after=deleted_after, noop_ran_first=ran_first)


def noop_marking(directory: str) -> None:
    (Path(directory) / "noop-ran").touch()


def stop_the_worker(directory: str, worker_pid: int, signals: int, then_s: float) -> None:
    """Send the worker SIGTERM (``signals`` times), then run on for ``then_s``."""
    for _ in range(signals):
        os.kill(worker_pid, signal.SIGTERM)
        time.sleep(0.05)
    time.sleep(then_s)
    record(directory, "stopper")


def hang(directory: str) -> None:
    record(directory, "hang-started")
    time.sleep(30)
    record(directory, "hang-ended")


TASKS = {
    "noop": noop,
    "probe": probe,
    "observe": observe_delete,
    "noop_marking": noop_marking,
    "stop": stop_the_worker,
}


def make_worker(sqs: Any, queue_url: str, isolate: Any, **settings: Any) -> Worker:
    """A worker on ``queue_url``; ``isolate`` is a bool, or a RUNS dict of settings."""
    run = isolate if isinstance(isolate, dict) else {"isolate": isolate}
    worker = Worker(TASKS, poll_wait_s=0, **run, **settings)
    worker.connect(queue_url, sqs=sqs)
    return worker


# -- tests ----------------------------------------------------------------------------


@RUNS
def test_prefetch_10_runs_every_task_at_a_fifth_of_the_requests(
    sqs_server: Any, run: Dict[str, Any]
) -> None:
    queue = sqs_server.make_queue()
    sqs_server.task_manager(queue).submit_batch([("noop", {})] * 30)
    sqs = counted_resource(sqs_server)
    calls = Calls(sqs)
    worker = make_worker(sqs, queue.url, run, prefetch=10, burst_tasks=30)

    assert worker.run_single() == 0

    assert worker.tasks_run == 30
    assert not_visible(sqs_server.endpoint_url, queue.url) == 0
    assert visible_now(sqs_server.endpoint_url, queue.url) == 0
    assert calls.actions["ReceiveMessage"] == 3
    assert calls.actions["DeleteMessage"] == 0
    assert calls.actions["ChangeMessageVisibility"] == 0
    # How many tasks one 50 ms flush gathers depends on the machine's load:
    # generous bounds here (benchmarks/peers.py measures 0.2 requests a task).
    sizes = [len(body["Entries"]) for body in calls.params["DeleteMessageBatch"]]
    assert sum(sizes) == 30 and max(sizes) <= 10
    assert max(sizes) >= 2
    assert sum(calls.actions.values()) / 30 < 1.2


@RUNS
def test_waiting_messages_are_kept_invisible_by_batched_heartbeats(
    sqs_server: Any, tmp_path: Path, run: Dict[str, Any]
) -> None:
    queue = sqs_server.make_queue()
    kwargs = {
        "directory": str(tmp_path),
        "endpoint": sqs_server.endpoint_url,
        "queue_url": queue.url,
        "seconds": 4.5,
    }
    sqs_server.task_manager(queue).submit_batch([("probe", kwargs)] * 3)
    sqs = counted_resource(sqs_server)
    calls = Calls(sqs)
    # Visibility 3 s: without heartbeats the two waiting messages come back
    # while the first task (4.5 s) still runs.
    worker = make_worker(
        sqs, queue.url, run, prefetch=3, burst_tasks=3, sqs_timeout=3, alarm_timeout=1
    )

    assert worker.run_single() == 0

    assert [entry["seen"] for entry in records(tmp_path, "probe")] == [0]
    assert len(records(tmp_path, "ran")) == 3
    batches = calls.params.get("ChangeMessageVisibilityBatch", [])
    assert len(batches) >= 3  # one a second while 4.5 s pass
    for body in batches:
        assert len(body["Entries"]) <= 2
        assert {entry["VisibilityTimeout"] for entry in body["Entries"]} == {3}
    assert calls.actions["ReceiveMessage"] == 1


@MODES
@pytest.mark.parametrize("signals", [1, 2], ids=["warm", "cold"])
def test_a_stop_hands_every_waiting_message_back_in_one_request(
    sqs_server: Any, tmp_path: Path, isolate: bool, signals: int, caplog: Any
) -> None:
    queue = sqs_server.make_queue()
    stopper = {"directory": str(tmp_path), "worker_pid": os.getpid(), "signals": signals}
    stopper["then_s"] = 0.3 if signals == 1 else 3.0
    sqs_server.task_manager(queue).submit_batch([("stop", stopper)] + [("noop", {})] * 4)
    sqs = counted_resource(sqs_server)
    calls = Calls(sqs)
    worker = make_worker(sqs, queue.url, isolate, prefetch=5, shutdown_grace_s=1.0)

    started = time.monotonic()
    assert worker.run_single() == 0
    took = time.monotonic() - started

    assert took < 2.5  # the cold stop ends the 3 s task at once
    hand_backs = [
        body
        for body in calls.params.get("ChangeMessageVisibilityBatch", [])
        if {entry["VisibilityTimeout"] for entry in body["Entries"]} == {0}
    ]
    assert len(hand_backs) == 1
    assert len(hand_backs[0]["Entries"]) == 4
    # Each hand-back's log line names its task.
    lines = [
        r.getMessage() for r in caplog.records if "handed back (visibility 0)" in r.getMessage()
    ]
    assert sum(line.startswith("task noop message") for line in lines) == 4, lines
    # All five can be received at once (visibility 30 s otherwise); the
    # warm-stopped task ended in its grace and was deleted.
    expected = 4 if signals == 1 else 5
    assert visible_now(sqs_server.endpoint_url, queue.url) == expected
    assert worker.tasks_run == 1


@RUNS
def test_a_finished_tasks_delete_is_sent_while_the_next_task_runs(
    sqs_server: Any, tmp_path: Path, run: Dict[str, Any]
) -> None:
    queue = sqs_server.make_queue()
    where = {"endpoint": sqs_server.endpoint_url, "queue_url": queue.url}
    manager = sqs_server.task_manager(queue)
    manager.submit("noop_marking", directory=str(tmp_path))
    manager.submit("observe", directory=str(tmp_path), **where)
    worker = make_worker(counted_resource(sqs_server), queue.url, run, prefetch=2)
    worker.settings = worker.settings.replace(burst_tasks=2)

    assert worker.run_single() == 0

    [observed] = records(tmp_path, "observed")
    assert observed["noop_ran_first"] is True
    # Flushed within 50 ms of the no-op's end, by the running task's wait
    # loop or timer: not after the observing task (3 s).
    assert observed["deleted_after"] is not None
    assert observed["deleted_after"] < 1.0


@RUNS
def test_a_hard_timeout_holds_with_messages_waiting(
    sqs_server: Any, tmp_path: Path, run: Dict[str, Any]
) -> None:
    queue = sqs_server.make_queue()
    manager = sqs_server.task_manager(queue)
    manager.submit("hang", directory=str(tmp_path))
    manager.submit_batch([("noop_marking", {"directory": str(tmp_path)})] * 2)
    worker = make_worker(counted_resource(sqs_server), queue.url, run, prefetch=3)
    worker.register("hang", hang, hard_timeout=1)
    worker.settings = worker.settings.replace(burst_tasks=3)

    started = time.monotonic()
    assert worker.run_single() == 0
    took = time.monotonic() - started

    assert took < 6  # the 30 s task was stopped at its 1 s hard timeout
    assert len(records(tmp_path, "hang-started")) == 1
    assert records(tmp_path, "hang-ended") == []
    assert (tmp_path / "noop-ran").exists()
    # The two no-ops were deleted; the timed-out message waits out its retry delay.
    assert not_visible(sqs_server.endpoint_url, queue.url) == 1


def test_without_prefetch_a_task_takes_two_requests(sqs_server: Any) -> None:
    queue = sqs_server.make_queue()
    sqs_server.task_manager(queue).submit_batch([("noop", {})] * 5)
    sqs = counted_resource(sqs_server)
    calls = Calls(sqs)
    worker = make_worker(sqs, queue.url, False, burst_tasks=5)

    assert worker.run_single() == 0

    assert calls.actions["ReceiveMessage"] == 5
    assert calls.actions["DeleteMessageBatch"] == 5
    assert sum(calls.actions.values()) == 10


@pytest.mark.parametrize("value", [0, 11, True, 2.5, "3"])
def test_prefetch_out_of_range_is_refused_naming_it(value: Any) -> None:
    with pytest.raises(ValueError, match=rf"prefetch {value!r}: must be a whole number"):
        WorkerSettings(prefetch=value)


def test_the_command_line_refuses_a_prefetch_sqs_cannot_give(
    sqs_server: Any, capsys: Any, caplog: Any
) -> None:
    from sqstaskmaster.cli import commands as cli
    from sqstaskmaster.worker.exitcodes import RET_USAGE

    queue = sqs_server.make_queue()
    command = ["worker", "worker_apps:app", "--queue-url", queue.url, "--prefetch", "11"]
    command += ["--endpoint-url", sqs_server.endpoint_url, "--region", "us-east-1"]
    assert cli.main(command) == RET_USAGE
    assert "prefetch 11: must be a whole number of messages from 1 to 10" in (
        caplog.text + capsys.readouterr().err
    )
