"""What prefetch gains on short tasks, and what it costs on longer ones: the default's reasons.

On one moto server (``sqstaskmaster.testing.sqs_server``):

- ``noop``: ``--tasks`` no-op tasks through one signal-mode ``Worker`` in this
  process, at each prefetch of ``--prefetches`` (interleaved, ``--rounds``
  rounds): tasks per second and SQS requests per task (a botocore
  ``before-send`` hook counts them).
- ``spread``: ``--slow-tasks`` tasks of ``--slow-s`` seconds each through
  ``sqstaskmaster worker --processes 3`` at prefetch 1 and 10: the time from
  the first task's start to the last task's end (each task writes its start
  and end times, CLOCK_MONOTONIC, to a file). With prefetch 10 the first
  worker process to poll holds up to 10 messages while the others idle.

Usage: python benchmarks/prefetch.py [--tasks 200] [--rounds 3] [--slow-tasks 12] [--slow-s 0.5]
The last line printed is one JSON object of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

from sqstaskmaster.testing import SQSServer, sqs_server
from sqstaskmaster.worker.loop import Worker

HERE = Path(__file__).resolve().parent


def noop() -> None:
    """The short task."""


def slow(seconds: float, directory: str) -> None:
    """The longer task: sleeps, and writes when it started and ended."""
    started = time.monotonic()
    time.sleep(seconds)
    path = Path(directory) / f"{os.getpid()}.{time.monotonic_ns()}"
    path.write_text(json.dumps([started, time.monotonic()]))


TASKS = {"noop": noop, "slow": slow}


class RequestCounter:
    """Counts the HTTP requests a boto3 client sends."""

    def __init__(self, sqs: Any) -> None:
        self.count = 0
        sqs.meta.client.meta.events.register("before-send.sqs", self._sent)

    def _sent(self, **_: Any) -> None:
        self.count += 1


def noop_round(server: SQSServer, tasks: int, prefetch: int) -> Dict[str, float]:
    queue = server.make_queue()
    server.task_manager(queue).submit_batch([("noop", {})] * tasks)
    sqs = server.session.resource("sqs", endpoint_url=server.endpoint_url)
    counter = RequestCounter(sqs)
    worker = Worker(TASKS, isolate=False, poll_wait_s=1, prefetch=prefetch, burst_tasks=tasks)
    worker.connect(queue.url, sqs=sqs)
    started = time.monotonic()
    worker.run_single()
    took = time.monotonic() - started
    return {"per_s": tasks / took, "requests_per_task": counter.count / tasks}


def spread_round(server: SQSServer, tasks: int, seconds: float, prefetch: int) -> float:
    queue = server.make_queue()
    directory = Path(tempfile.mkdtemp(prefix="prefetch-bench-"))
    kwargs = {"seconds": seconds, "directory": str(directory)}
    server.task_manager(queue).submit_batch([("slow", kwargs)] * tasks)
    command = [sys.executable, "-m", "sqstaskmaster", "--log-level", "WARNING", "worker"]
    command += [f"{Path(__file__).stem}:TASKS", "--queue-url", queue.url, "--processes", "3"]
    command += ["--prefetch", str(prefetch), "--burst-idle", "2", "--poll-wait", "1"]
    environment = dict(os.environ, **server.environment, PYTHONPATH=str(HERE))
    process = subprocess.Popen(command, cwd=str(HERE), env=environment)
    try:
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    times = [json.loads(path.read_text()) for path in directory.iterdir()]
    if len(times) != tasks:
        raise RuntimeError(f"{len(times)} of {tasks} slow tasks ran")
    return max(end for _, end in times) - min(start for start, _ in times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prefetches", type=int, nargs="+", default=[1, 2, 5, 10])
    parser.add_argument("--slow-tasks", type=int, default=12)
    parser.add_argument("--slow-s", type=float, default=0.5)
    args = parser.parse_args()
    noop_runs: Dict[int, List[Dict[str, float]]] = {n: [] for n in args.prefetches}
    spread: Dict[int, List[float]] = {1: [], 10: []}
    with sqs_server() as server:
        for number in range(args.rounds):
            order = args.prefetches[number % len(args.prefetches) :]
            for prefetch in order + args.prefetches[: number % len(args.prefetches)]:
                figures = noop_round(server, args.tasks, prefetch)
                noop_runs[prefetch].append(figures)
                print(
                    f"round {number + 1} noop prefetch {prefetch:2d}: "
                    f"{figures['per_s']:.1f} tasks/s, {figures['requests_per_task']:.3f} req/task",
                    flush=True,
                )
            for prefetch in (1, 10) if number % 2 == 0 else (10, 1):
                took = spread_round(server, args.slow_tasks, args.slow_s, prefetch)
                spread[prefetch].append(took)
                print(f"round {number + 1} spread prefetch {prefetch:2d}: {took:.2f} s", flush=True)
    result: Dict[str, Any] = {}
    for prefetch, runs in noop_runs.items():
        result[f"noop_prefetch_{prefetch}_per_s"] = round(
            statistics.median(run["per_s"] for run in runs), 1
        )
        result[f"noop_prefetch_{prefetch}_requests_per_task"] = round(
            statistics.median(run["requests_per_task"] for run in runs), 3
        )
    for prefetch, times in spread.items():
        result[f"spread_prefetch_{prefetch}_s"] = round(statistics.median(times), 2)
    ideal = -(-args.slow_tasks // 3) * args.slow_s
    result["spread_ideal_s"] = ideal
    result["slow_tasks"], result["slow_s"], result["processes"] = args.slow_tasks, args.slow_s, 3
    print(json.dumps(result))


if __name__ == "__main__":
    main()
