"""Reliability 1: SIGKILL a random worker process every 1 to 3 s while 200 tasks run.

Three worker processes run under the supervisor (``--processes 3``, process
isolation, the defaults users get). A killer thread SIGKILLs one of the
supervisor's children (a worker process, never the supervisor itself) 1 to 3 s after
the previous victim was restarted; the supervisor restarts it. A killed worker never deletes
the message it held, so SQS redelivers it after its visibility timeout and
another worker runs it again: every task must complete at least once (none
lost), and the test reports how many completed twice (at-least-once delivery:
the task of an isolated worker that was killed may have finished in its
orphaned child before the redelivery).
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, List

import pytest

from .harness import WorkerProcess, children_of, event_directory, queue_depth, report, wait_for

TASKS = 200
PROCESSES = 3
SQS_TIMEOUT_S = 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(120)
def test_kill_9_loses_nothing(sqs_server: Any, worker_args: List[str], tmp_path: Path) -> None:
    rng = random.Random(6001)
    events_dir, events = event_directory(tmp_path)
    queue = sqs_server.make_queue()
    keys = [f"t{number:03d}" for number in range(TASKS)]
    sqs_server.task_manager(queue).submit_batch(
        [("work", {"key": key, "seconds": round(rng.uniform(0.02, 0.08), 3)}) for key in keys]
    )
    started = time.monotonic()
    supervisor = WorkerProcess(
        sqs_server,
        queue.url,
        events_dir,
        "--processes",
        str(PROCESSES),
        "--sqs-timeout",
        str(SQS_TIMEOUT_S),
        "--alarm-timeout",
        "1",
        "--poll-wait",
        "1",
        "--retry-first",
        "1",
        settings=worker_args,
    )
    kills: List[int] = []
    stop_killing = threading.Event()

    def killer() -> None:
        # 1 to 3 s after the parent has restarted the previous victim, kill a
        # random worker. (Killing the last live worker again and again would
        # only measure the supervisor's crash-loop pause, which doubles, up to
        # 30 s, for a worker that dies within 30 s of its start.)
        while not stop_killing.wait(rng.uniform(1.0, 3.0)):
            while len(children_of(supervisor.pid)) < PROCESSES:
                if stop_killing.wait(0.1):
                    return
            victim = rng.choice(children_of(supervisor.pid))
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                continue
            kills.append(victim)

    thread = threading.Thread(target=killer, daemon=True)
    try:
        wait_for(lambda: len(children_of(supervisor.pid)) == PROCESSES, 15)
        thread.start()
        # Kill until every task has completed once, then let the queue drain:
        # messages held by a killed worker come back after SQS_TIMEOUT_S.
        wait_for(lambda: len(events.counts("done")) == TASKS, 90, step_s=0.2)
        stop_killing.set()
        thread.join()
        wait_for(lambda: queue_depth(sqs_server, queue.url) == 0, 3 * SQS_TIMEOUT_S + 10)
        exit_code = supervisor.stop(20)
    finally:
        stop_killing.set()
        supervisor.close()
    elapsed = time.monotonic() - started
    done = events.counts("done")
    lost = [key for key in keys if done[key] == 0]
    twice = [key for key in keys if done[key] > 1]
    log = supervisor.log
    restarts = log.count("restarting in")
    report(
        "kill9",
        worker_args=worker_args,
        tasks=TASKS,
        processes=PROCESSES,
        kills=len(kills),
        restarts=restarts,
        lost=len(lost),
        run_twice=len(twice),
        completions=sum(done.values()),
        exit_code=exit_code,
        time_s=f"{elapsed:.1f}",
    )
    assert lost == []
    assert len(kills) >= 3, "the killer must have struck during the run"
    # Every kill was seen and answered by the supervisor (a victim may have
    # been killed moments before the run ended, hence >= kills - 1).
    assert log.count("died with signal SIGKILL") >= len(kills) - 1
    assert restarts >= len(kills) - 1
    assert exit_code == 0
    assert set(done) == set(keys)
