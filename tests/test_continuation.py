"""Checkpoints and continuation messages: a task goes on past its receive, a stop, a restart.

Workers run in this process (both execution modes) or as ``python -m
sqstaskmaster worker`` subprocesses, against the test SQS server. Each task
step appends a line to a trace file: which process ran which step, from the
message of which continuation, when.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from sqstaskmaster.run.context import TaskContext
from sqstaskmaster.worker.loop import Worker


def steps(trace: Path) -> List[Dict[str, Any]]:
    if not trace.exists():
        return []
    return [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]


def stepper(total: int, trace: str, step_s: float, *, context: TaskContext) -> None:
    state = context.state or {"step": 0}
    step = state["step"]
    while step < total:
        if context.stop_requested:
            return
        started = time.time()
        time.sleep(step_s)
        step += 1
        with open(trace, "a") as out:
            line = {
                "step": step,
                "started": started,
                "ended": time.time(),
                "message_id": context.message_id,
                "continuation": context.continuation,
            }
            out.write(json.dumps(line) + "\n")
        context.checkpoint({"step": step})


@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "signal-mode"])
def test_a_resumable_task_goes_on_in_continuation_messages(
    sqs_server: Any, sqs_queue: Any, tmp_path: Path, isolate: bool
) -> None:
    trace = tmp_path / "trace.jsonl"
    worker = Worker(
        isolate=isolate,
        continue_after_s=1,
        shutdown_grace_s=2,
        poll_wait_s=1,
        burst_idle_s=2,
        sqs_timeout=6,
    )
    worker.register("stepper", stepper, resumable=True, hard_timeout=60)
    worker.connect(sqs_queue.url, sqs=sqs_server.sqs)
    sqs_server.task_manager(sqs_queue).submit("stepper", total=12, trace=str(trace), step_s=0.25)
    worker.run_single()
    done = steps(trace)
    assert [line["step"] for line in done] == list(range(1, 13))
    continuations = sorted({line["continuation"] for line in done})
    assert continuations == list(range(len(continuations))) and len(continuations) >= 3
