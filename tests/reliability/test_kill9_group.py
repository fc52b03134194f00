"""Reliability 7: SIGKILL a worker process whose task has started a subprocess.

Each task (``spawns``) starts ``sleep 300`` on its first run and then sleeps;
its second run completes at once. A worker runs alone (``sqstaskmaster
worker``, no ``--processes``) or under the supervisor (``--processes 2``).
Three times, the test SIGKILLs the worker process that runs a first run (in
single-process mode the worker is then started again, as ECS or systemd
would). Within 5 s of each worker's death no process of its task's process
group (the task child and its ``sleep``) may be left, and every message must
still be run to completion later (its visibility runs out, SQS redelivers it):
nothing lost, the queue empty at the end.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from .harness import (
    WorkerProcess,
    event_directory,
    group_members,
    queue_depth,
    report,
    running,
    wait_for,
)

KILLS = 3
SQS_TIMEOUT_S = 4
CLEAN_UP_WITHIN_S = 5.0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(180)
@pytest.mark.parametrize("processes", [1, 2], ids=["single-process", "processes-2"])
# Prefetch changes nothing here but the wait for the killed worker's other messages.
@pytest.mark.parametrize("worker_args", [[]], ids=["prefetch-1"])
def test_kill_9_of_a_worker_leaves_none_of_its_tasks_processes(
    sqs_server: Any, worker_args: List[str], tmp_path: Path, processes: int
) -> None:
    events_dir, events = event_directory(tmp_path)
    queue = sqs_server.make_queue()
    keys = [f"k{number}" for number in range(KILLS)]
    sqs_server.task_manager(queue).submit_batch([("spawns", {"key": key}) for key in keys])
    started = time.monotonic()

    def start() -> WorkerProcess:
        options = ["--processes", str(processes)] if processes > 1 else []
        return WorkerProcess(
            sqs_server,
            queue.url,
            events_dir,
            *options,
            *("--sqs-timeout", str(SQS_TIMEOUT_S), "--alarm-timeout", "1", "--poll-wait", "1"),
            *("--retry-first", "1"),
            log_name=f"worker-{len(workers)}",
            settings=worker_args,
        )

    workers: List[WorkerProcess] = []
    workers.append(start())
    killed: Dict[str, Dict[str, Any]] = {}
    clean_up_s: List[float] = []
    leftover = 0
    groups: List[int] = []
    try:
        for _ in range(KILLS):
            victim = wait_for(
                lambda: [
                    data
                    for data in events.data("start")
                    if data["first"] and data["key"] not in killed and running(data["worker"])
                ],
                60,
            )[0]
            group, worker_pid = victim["group"], victim["worker"]
            groups.append(group)
            assert len(group_members(group)) == 2  # the task child and its sleep
            os.kill(worker_pid, signal.SIGKILL)
            killed[victim["key"]] = victim
            if processes == 1:
                workers[-1].wait(10)
            else:
                while running(worker_pid):
                    time.sleep(0.01)
            died = time.monotonic()
            while group_members(group) and time.monotonic() - died < CLEAN_UP_WITHIN_S:
                time.sleep(0.01)
            clean_up_s.append(time.monotonic() - died)
            leftover += len(group_members(group))
            if processes == 1:
                workers.append(start())
        wait_for(lambda: set(events.counts("done")) == set(keys), 60, step_s=0.2)
        wait_for(lambda: queue_depth(sqs_server, queue.url) == 0, 3 * SQS_TIMEOUT_S + 10)
        exit_code = workers[-1].stop(20)
    finally:
        for worker in workers:
            worker.close()
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
    elapsed = time.monotonic() - started
    done = events.counts("done")
    report(
        "kill9_group",
        worker_args=worker_args,
        processes=processes,
        kills=len(killed),
        leftover_processes=leftover,
        clean_up_max_ms=f"{max(clean_up_s) * 1000:.0f}",
        lost=len([key for key in keys if done[key] == 0]),
        time_s=f"{elapsed:.1f}",
    )
    assert len(killed) == KILLS
    assert leftover == 0
    assert max(clean_up_s) < CLEAN_UP_WITHIN_S
    assert set(done) == set(keys)
    assert exit_code == 0
