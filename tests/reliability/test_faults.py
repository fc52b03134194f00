"""Reliability 3: throttling and 5xx answers to receives, visibility changes and deletes.

A fault proxy on 127.0.0.1 (:class:`harness.FaultProxy`) sits between the
worker and moto's server and answers chosen requests with 400
ThrottlingException or 500 InternalError, on a fixed pattern per SQS action.
The worker runs with ``AWS_MAX_ATTEMPTS=2``: a lone fault is absorbed by
botocore's own retry (after its backoff), two in a row reach our code. What
must hold: the worker process survives (no restart, exit 0 at SIGTERM), a
failed poll is retried after the worker's backoff, every fault that reaches
our code is notified and logged, and no task is lost. Deletes go ten to a
request (DeleteMessageBatch): a request that fails past botocore's retries is
tried again by the worker (a warning), and after three failed tries each of
its messages is logged and notified, and its task runs again after the
visibility timeout ("run twice").
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from .harness import (
    FaultProxy,
    WorkerProcess,
    drain_bodies,
    event_directory,
    queue_depth,
    report,
    wait_for,
)

SQS_TIMEOUT_S = 3
# "." forwards, "T" throttles, "E" answers 500; each pattern cycles over that
# action's requests. A single T or E is retried away by botocore; TE, EE or TT
# outlasts AWS_MAX_ATTEMPTS=2 and reaches the worker.
SCENARIOS: Dict[str, Dict[str, Any]] = {
    "receive_and_delete": {
        "schedules": {
            "ReceiveMessage": "T.TE................",
            # Three TE pairs: the worker's three tries of one batch all fail
            # (reported, run twice); then a TE pair its second try gets past.
            "DeleteMessageBatch": "TETETE....TE....",
        },
        # 18 tasks: past the 2nd receive (the TE pair) and the 12th delete
        # request with prefetch 1 or 10; a longer run only waits longer.
        "tasks": [0.02] * 18,
    },
    "visibility": {
        "schedules": {"ChangeMessageVisibility": "..E...TT...."},
        # Visibility changes come from heartbeats (tasks longer than the 1 s
        # heartbeat), from retry backoffs (tasks that fail, dead-lettered
        # after 2 receives) and, if the handler makes one, from task entry.
        "tasks": [0.02] * 6 + [1.6] * 3,
        "poison": 6,
    },
}
MAX_RECEIVE_COUNT = 2


def _faults_reaching_code(log: List[tuple], action: str) -> List[float]:
    """Times of the second fault of each back-to-back pair of ``action`` (seen by our code)."""
    times = []
    previous = None
    for when, name, kind in log:
        if name != action:
            continue
        if kind is not None and previous is not None:
            times.append(when)
            previous = None
        else:
            previous = kind
    return times


@pytest.mark.timeout(90)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_faults_are_survived_retried_notified(
    sqs_server: Any, worker_args: List[str], tmp_path: Path, scenario: str
) -> None:
    settings = SCENARIOS[scenario]
    events_dir, events = event_directory(tmp_path)
    queue = sqs_server.make_queue(dead_letter=True, max_receive_count=MAX_RECEIVE_COUNT)
    keys = [f"f{number:03d}" for number in range(len(settings["tasks"]))]
    poison_keys = [f"p{number}" for number in range(settings.get("poison", 0))]
    # Failing tasks first: their retry backoffs then run out while the others run.
    sqs_server.task_manager(queue).submit_batch(
        [("poison", {"key": key}) for key in poison_keys]
        + [
            ("work", {"key": key, "seconds": seconds})
            for key, seconds in zip(keys, settings["tasks"])
        ]
    )
    started = time.monotonic()
    with FaultProxy(sqs_server.endpoint_url, settings["schedules"]) as proxy:
        worker = WorkerProcess(
            sqs_server,
            queue.url,
            events_dir,
            "--sqs-timeout",
            str(SQS_TIMEOUT_S),
            "--alarm-timeout",
            "1",
            "--poll-wait",
            "1",
            "--retry-first",
            "1",
            "--retry-factor",
            "1",
            endpoint_url=proxy.url,
            env={"AWS_MAX_ATTEMPTS": "2"},
            settings=worker_args,
        )
        try:
            wait_for(
                lambda: (
                    not worker.alive()
                    or (
                        len(events.counts("done")) == len(keys)
                        and queue_depth(sqs_server, queue.url) == 0
                    )
                ),
                60,
                step_s=0.2,
            )
            survived = worker.alive()
            exit_code = worker.stop(15) if survived else worker.process.returncode
            if not survived:
                # Whether the dead worker lost anything: a fault-free worker drains the rest.
                proxy.enabled = False
                rescue = WorkerProcess(
                    sqs_server,
                    queue.url,
                    events_dir,
                    "--burst-idle",
                    "4",
                    log_name="rescue",
                    settings=worker_args,
                )
                try:
                    rescue.wait(40)
                finally:
                    rescue.close()
        finally:
            worker.close()
        faults = dict(proxy.faults)
        requests = dict(proxy.requests)
        request_log = list(proxy.log)
    elapsed = time.monotonic() - started
    done = events.counts("done")
    lost = [key for key in keys if done[key] == 0]
    twice = [key for key in keys if done[key] > 1]
    notified = events.notified()
    log = worker.log
    reached: Dict[str, List[float]] = {
        action: _faults_reaching_code(request_log, action) for action in settings["schedules"]
    }
    retried = log.count("DeleteMessageBatch of ")
    reported = log.count("DeleteMessageBatch failed after 3 tries")
    report(
        f"faults[{scenario}]",
        worker_args=worker_args,
        tasks=len(keys),
        failing_tasks=len(poison_keys),
        faults_injected=sum(faults.get(action, 0) for action in settings["schedules"]),
        throttles=faults.get("throttle", 0),
        server_errors=faults.get("5xx", 0),
        reached_worker=sum(len(times) for times in reached.values()),
        notified_sqs_errors=sum(1 for entry in notified if entry["type"] == "ClientError"),
        requests=sum(requests.values()),
        lost=len(lost),
        run_twice=len(twice),
        deletes_retried=retried,
        deletes_given_up=reported,
        worker_survived=survived,
        time_s=f"{elapsed:.1f}",
    )
    assert survived, f"the worker died (exit {exit_code}):\n{log[-4000:]}"
    assert exit_code == 0
    assert lost == []
    assert queue_depth(sqs_server, queue.url) == 0
    # Failing tasks still reach the dead-letter queue, however their backoffs went.
    dead = [json.loads(body)["kwargs"]["key"] for body in drain_bodies(queue.dead_letter_queue)]
    assert set(poison_keys) <= set(dead)
    # Another task there ran to its end, but its deletes failed until its
    # receives passed maxReceiveCount: a copy in the dead-letter queue, not a loss.
    assert all(done[key] >= 1 for key in set(dead) - set(poison_keys)), dead
    for action, times in reached.items():
        # Each action's pattern put faults past botocore's retries during the run...
        assert times, f"no {action} fault reached the worker; requests {requests}"
        if action == "DeleteMessageBatch":
            continue  # tried again first: checked below
        # ...and each such fault was notified, naming the operation.
        assert sum(action in entry["error"] for entry in notified) >= len(times), notified
    if "ReceiveMessage" in reached:
        assert "poll 1 of 5 failed" in log
        # The worker waited out its poll backoff (2 s after a first failure)
        # before polling again.
        receive_times = [when for when, name, _ in request_log if name == "ReceiveMessage"]
        for failed_at in reached["ReceiveMessage"]:
            later = [when for when in receive_times if when > failed_at]
            if later:
                assert later[0] - failed_at >= 1.5, (failed_at, later[0])
    if "DeleteMessageBatch" in reached:
        # Each fault past botocore's retries was tried again (a warning) or,
        # on the third try, reported for each message of the batch...
        assert retried >= 2 and reported >= 1, (retried, reported)
        assert retried + reported >= len(reached["DeleteMessageBatch"])
        assert sum("DeleteMessageBatch" in entry["error"] for entry in notified) == reported
        # ...and a task whose delete was given up was redelivered and ran again.
        assert len(twice) >= 1
    if "ChangeMessageVisibility" in reached:
        assert "ChangeMessageVisibility operation" in log
