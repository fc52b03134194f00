"""The worker's own cost: no-op tasks per second through Worker vs a bare boto3 loop.

On one moto server (started here through ``sqstaskmaster.testing.sqs_server``),
each round fills a queue with ``--tasks`` no-op tasks and drains it three ways:

- ``boto3_floor_per_s``: a bare loop on a boto3 client: ``receive_message``
  (MaxNumberOfMessages=1, the worker's wait and visibility timeout, all
  attributes) then ``delete_message``. Nothing less can consume a message.
- ``worker_signal_per_s``: ``Worker(isolate=False)`` (signal mode) in this
  process, in burst mode, until it has run every task.
- ``worker_isolated_per_s``: the same with ``isolate=True`` (a fork per task).
- ``worker_reused_per_s``: isolated, with ``max_tasks_per_child=100`` (one
  forked child runs up to 100 tasks in a row).

Every SQS request is counted with a botocore ``before-send`` hook;
``requests_per_task`` is the signal-mode worker's (the bare loop's is 2).
Figures are medians over ``--rounds`` rounds, the three ways interleaved
(in a rotating order); the ratios are medians of the per-round ratios.
Target: worker_signal_per_s >= 0.7 x boto3_floor_per_s. Logging stays at
its default level (WARNING), as the per-task INFO lines are a deployment
choice; ``--log-info`` measures with them.

``--metrics`` adds a fourth way, ``worker_signal_metrics_per_s``: signal mode
with Prometheus metrics on (``metrics_port=0``, served on a free port);
``metrics_ratio`` is the median per-round ratio of it to signal mode without
metrics (target: >= 0.95).

Usage: python benchmarks/overhead.py [--tasks N] [--rounds N] [--metrics] [--profile]
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import pstats
import statistics
import time
from typing import Any, Callable, Dict, List

from sqstaskmaster.testing import SQSServer, sqs_server
from sqstaskmaster.worker.loop import Worker

SQS_TIMEOUT_S = 30
POLL_WAIT_S = 1
TARGET_RATIO = 0.7
METRICS_TARGET_RATIO = 0.95


def noop() -> None:
    """The task: nothing, so all that is measured is the machinery around it."""


class RequestCounter:
    """Counts the HTTP requests a boto3 client sends (a botocore ``before-send`` hook)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, **kwargs: Any) -> None:
        self.count += 1

    def resource(self, server: SQSServer) -> Any:
        """A new SQS resource on ``server`` whose client is counted."""
        sqs = server.session.resource("sqs", endpoint_url=server.endpoint_url)
        sqs.meta.client.meta.events.register("before-send.sqs", self)
        return sqs


def fill(server: SQSServer, tasks: int) -> str:
    queue = server.make_queue()
    server.task_manager(queue).submit_batch([("noop", {})] * tasks)
    return queue.url


def bare_loop(server: SQSServer, url: str, tasks: int) -> Dict[str, float]:
    counter = RequestCounter()
    client = counter.resource(server).meta.client
    done = 0
    started = time.perf_counter()
    while done < tasks:
        response = client.receive_message(
            QueueUrl=url,
            AttributeNames=["All"],
            MaxNumberOfMessages=1,
            WaitTimeSeconds=POLL_WAIT_S,
            VisibilityTimeout=SQS_TIMEOUT_S,
        )
        for message in response.get("Messages", []):
            client.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            done += 1
    elapsed = time.perf_counter() - started
    return {"per_s": tasks / elapsed, "requests_per_task": counter.count / tasks}


def worker_run(
    server: SQSServer,
    url: str,
    tasks: int,
    isolate: bool,
    metrics: bool = False,
    max_tasks_per_child: int = 1,
) -> Dict[str, float]:
    counter = RequestCounter()
    worker = Worker(
        {"noop": noop},
        isolate=isolate,
        sqs_timeout=SQS_TIMEOUT_S,
        poll_wait_s=POLL_WAIT_S,
        burst_tasks=tasks,
        metrics_port=0 if metrics else None,
        max_tasks_per_child=max_tasks_per_child,
    )
    worker.connect(url, sqs=counter.resource(server))
    started = time.perf_counter()
    code = worker.run_single()
    elapsed = time.perf_counter() - started
    if code != 0 or worker.tasks_run != tasks:
        raise RuntimeError(f"worker exited {code} after {worker.tasks_run} of {tasks} tasks")
    return {"per_s": tasks / elapsed, "requests_per_task": counter.count / tasks}


def profile_signal_mode(server: SQSServer, tasks: int) -> str:
    url = fill(server, tasks)
    profiler = cProfile.Profile()
    profiler.enable()
    worker_run(server, url, tasks, isolate=False)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(30)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200, help="tasks per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; figures are medians")
    parser.add_argument("--profile", action="store_true", help="print a signal-mode profile")
    parser.add_argument("--log-info", action="store_true", help="log the worker at INFO")
    parser.add_argument(
        "--metrics", action="store_true", help="also measure signal mode with metrics on"
    )
    args = parser.parse_args()
    if args.log_info:
        logging.basicConfig(level=logging.INFO, filename="/dev/null")
        logging.getLogger("botocore").setLevel(logging.WARNING)
    results: Dict[str, List[Dict[str, float]]] = {
        "floor": [],
        "signal": [],
        "isolated": [],
        "reused": [],
    }
    ways: Dict[str, Callable[[SQSServer, str], Dict[str, float]]] = {
        "floor": lambda server, url: bare_loop(server, url, args.tasks),
        "signal": lambda server, url: worker_run(server, url, args.tasks, isolate=False),
        "isolated": lambda server, url: worker_run(server, url, args.tasks, isolate=True),
        "reused": lambda server, url: worker_run(
            server, url, args.tasks, isolate=True, max_tasks_per_child=100
        ),
    }
    if args.metrics:
        results["metrics"] = []
        ways["metrics"] = lambda server, url: worker_run(
            server, url, args.tasks, isolate=False, metrics=True
        )
    with sqs_server() as server:
        # Warm up the server and this process's imports.
        bare_loop(server, fill(server, 20), 20)
        names = list(ways)
        for round_number in range(1, args.rounds + 1):
            # Rotate the order, so no way always runs first (on a busy machine).
            shift = (round_number - 1) % len(names)
            for name in names[shift:] + names[:shift]:
                way = ways[name]
                url = fill(server, args.tasks)
                figures = way(server, url)
                # Keep the server's state small: moto slows down as queues pile up.
                server.client.delete_queue(QueueUrl=url)
                results[name].append(figures)
                print(
                    f"round {round_number} {name:8s} {figures['per_s']:7.1f} tasks/s "
                    f"{figures['requests_per_task']:.2f} requests/task",
                    flush=True,
                )
        if args.profile:
            print(profile_signal_mode(server, args.tasks))

    def median(name: str, key: str) -> float:
        return statistics.median(figures[key] for figures in results[name])

    def ratio(name: str, base: str = "floor") -> float:
        # Median of the per-round ratios: each round's ways ran back to back.
        return statistics.median(
            mine["per_s"] / other["per_s"] for mine, other in zip(results[name], results[base])
        )

    floor = median("floor", "per_s")
    summary = {
        "worker_signal_per_s": round(median("signal", "per_s"), 1),
        "worker_isolated_per_s": round(median("isolated", "per_s"), 1),
        "worker_reused_per_s": round(median("reused", "per_s"), 1),
        "boto3_floor_per_s": round(floor, 1),
        "requests_per_task": round(median("signal", "requests_per_task"), 2),
        "requests_per_task_isolated": round(median("isolated", "requests_per_task"), 2),
        "boto3_requests_per_task": round(median("floor", "requests_per_task"), 2),
        "signal_ratio": round(ratio("signal"), 3),
        "isolated_ratio": round(ratio("isolated"), 3),
        "target_ratio": TARGET_RATIO,
        "tasks": args.tasks,
        "rounds": args.rounds,
    }
    if args.metrics:
        summary["worker_signal_metrics_per_s"] = round(median("metrics", "per_s"), 1)
        summary["metrics_ratio"] = round(ratio("metrics", "signal"), 3)
        summary["metrics_target_ratio"] = METRICS_TARGET_RATIO
        print(
            f"metrics on: {summary['metrics_ratio']:.3f} x signal mode without metrics "
            f"(target >= {METRICS_TARGET_RATIO})"
        )
    verdict = "meets" if summary["signal_ratio"] >= TARGET_RATIO else "MISSES"
    print(
        f"signal mode {summary['signal_ratio']:.2f} x the bare loop ({verdict} the "
        f"{TARGET_RATIO} x target); isolation {summary['isolated_ratio']:.2f} x"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
