"""What the task status table costs a worker: throughput, and requests per heartbeat.

On one moto server (``sqstaskmaster.testing.sqs_server``, which serves SQS and
DynamoDB on the same endpoint), in one run:

- Throughput: each round fills a fresh queue with ``--tasks`` no-op tasks and
  drains it with ``Worker(prefetch=10, poll_wait_s=1, sqs_timeout=30,
  burst_tasks=--tasks)`` in this process, without and with
  ``status_table=SimpleNamespace(name=..., client=...)`` (a fresh table per
  with-table run, made with ``table_definition``; its client has the worker's
  ``writer_client_config()``). The timed span is ``run_single()``, so it
  includes the last items, written as the worker stops. Signal mode
  (``isolate=False``) is the main pair, isolation (a fork per task) the
  second. Within a round each pair runs back to back, in an order that
  alternates from round to round. After each with-table run (untimed) the
  table is scanned: it must hold one item per task, all ``done``, or the run
  fails. Every request is counted with a botocore ``before-send`` hook, SQS
  and DynamoDB separately. ``ratio``: the median of the per-round ratios of
  with to without (target >= 0.9).
- A long task: one task of ``--long-s`` seconds (``time.sleep``) with
  ``sqs_timeout=3`` (a heartbeat each second), in signal mode and isolated.
  The task writes its start and end (``time.monotonic()``) to a file; the
  hooks time every request. Within the task's run: ``heartbeats`` are the
  visibility changes (``ChangeMessageVisibility``, and entries of
  ``ChangeMessageVisibilityBatch``; the queue holds that one message only, so
  all are the task's), ``status_writes`` the DynamoDB ``UpdateItem``
  requests, and ``extra_requests_per_heartbeat`` = (DynamoDB requests, less the
  one start write) / heartbeats (target <= 1 in both modes; the top-level
  figure is the worse mode's). ``dynamodb_requests`` counts every DynamoDB
  request of that worker, from its poll to its exit (BatchGetItem, start,
  heartbeat writes, end).

Logging stays at its default level (WARNING). ``--profile`` prints profiles
of one signal-mode drain without and one with the table (``run_single``
only): the main thread's, then its helper threads' (where the status writes
run).

Usage: python benchmarks/status_table.py [--tasks 300] [--rounds 5] [--long-s 12] [--profile]
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Counter, Dict, List, Optional, Tuple

from sqstaskmaster.ops.status_items import table_definition
from sqstaskmaster.ops.status_requests import writer_client_config
from sqstaskmaster.testing import SQSServer, sqs_server
from sqstaskmaster.worker.loop import Worker

SQS_TIMEOUT_S = 30
POLL_WAIT_S = 1
PREFETCH = 10
# A safety net only: each run ends on burst_tasks; this ends one that would poll forever.
BURST_IDLE_S = 5.0
LONG_SQS_TIMEOUT_S = 3  # a heartbeat each second
TARGET_RATIO = 0.9
TARGET_EXTRA_PER_HEARTBEAT = 1.0
HEARTBEAT_OPERATIONS = ("ChangeMessageVisibility", "ChangeMessageVisibilityBatch")


def noop() -> None:
    """The short task: nothing, so what is measured is the machinery around it."""


def long_task(seconds: float, path: str) -> None:
    """The long task: sleeps ``seconds``, then writes when it started and ended (monotonic)."""
    started = time.monotonic()
    time.sleep(seconds)
    Path(path).write_text(json.dumps([started, time.monotonic()]))


TASKS = {"noop": noop, "long": long_task}


class RequestLog:
    """The HTTP requests boto3 clients send (a botocore ``before-send`` hook): when, which
    operation, and the body (to count a batch's entries later)."""

    def __init__(self) -> None:
        # Appended from the worker's helper threads too (list.append is atomic).
        self.sent: List[Tuple[float, str, Any]] = []

    def __call__(self, event_name: str, request: Any, **_: Any) -> None:
        self.sent.append((time.monotonic(), event_name.rsplit(".", 1)[-1], request.body))

    def watch(self, client: Any, service: str) -> Any:
        client.meta.events.register(f"before-send.{service}", self)
        return client

    def operations(self, start: float = float("-inf"), end: float = float("inf")) -> Counter[str]:
        """Requests sent from ``start`` to ``end`` (monotonic), by operation."""
        return collections.Counter(op for at, op, _ in self.sent if start <= at <= end)

    def heartbeats(self, start: float, end: float) -> int:
        """Visibility changes sent from ``start`` to ``end``: one per single change, one per
        entry of a batch."""
        count = 0
        for at, op, body in self.sent:
            if start <= at <= end and op in HEARTBEAT_OPERATIONS:
                count += batch_entries(body) if op.endswith("Batch") else 1
        return count


def batch_entries(body: Any) -> int:
    """How many entries a ChangeMessageVisibilityBatch request body carries."""
    text = body.decode() if isinstance(body, bytes) else str(body or "")
    try:
        return len(json.loads(text)["Entries"])
    except (ValueError, KeyError, TypeError):  # the query protocol: Entry.N.Id=...
        return max(1, text.count(".Id="))


class Bench:
    """The server, a counted SQS resource and DynamoDB client per worker run."""

    def __init__(self, server: SQSServer) -> None:
        self.server = server
        self.dynamodb = server.session.client("dynamodb", endpoint_url=server.endpoint_url)

    def fill(self, tasks: List[Tuple[str, Dict[str, Any]]]) -> str:
        queue = self.server.make_queue()
        self.server.task_manager(queue).submit_batch(tasks)
        return queue.url

    def make_table(self) -> str:
        name = f"status-bench-{uuid.uuid4().hex[:12]}"
        self.dynamodb.create_table(**table_definition(name))
        return name

    def states(self, table: str) -> Counter[str]:
        """The table's items, by state (a consistent scan)."""
        states: Counter[str] = collections.Counter()
        pages = self.dynamodb.get_paginator("scan").paginate(
            TableName=table,
            ProjectionExpression="#s",
            ExpressionAttributeNames={"#s": "state"},
            ConsistentRead=True,
        )
        for page in pages:
            states.update(item.get("state", {}).get("S", "(none)") for item in page["Items"])
        return states

    def clean(self, url: str, table: Optional[str]) -> None:
        # Keep the server's state small: moto slows down as queues and tables pile up.
        self.server.client.delete_queue(QueueUrl=url)
        if table is not None:
            self.dynamodb.delete_table(TableName=table)

    def worker(
        self, url: str, tasks: int, isolate: bool, table: Optional[str], sqs_timeout: int
    ) -> Tuple[Worker, RequestLog, RequestLog]:
        """A connected worker for ``tasks`` tasks, and its SQS and DynamoDB request logs."""
        sqs_log, dynamodb_log = RequestLog(), RequestLog()
        sqs = self.server.session.resource("sqs", endpoint_url=self.server.endpoint_url)
        sqs_log.watch(sqs.meta.client, "sqs")
        status_table = None
        if table is not None:
            client = self.server.session.client(
                "dynamodb", endpoint_url=self.server.endpoint_url, config=writer_client_config()
            )
            status_table = SimpleNamespace(
                name=table, client=dynamodb_log.watch(client, "dynamodb")
            )
        worker = Worker(
            TASKS,
            isolate=isolate,
            prefetch=PREFETCH,
            poll_wait_s=POLL_WAIT_S,
            sqs_timeout=sqs_timeout,
            burst_tasks=tasks,
            burst_idle_s=BURST_IDLE_S,
            status_table=status_table,
        )
        worker.connect(url, sqs=sqs)
        return worker, sqs_log, dynamodb_log

    def drain(
        self, tasks: int, isolate: bool, with_table: bool, profiles: Any = None
    ) -> Dict[str, Any]:
        """One timed drain of ``tasks`` no-op tasks; the table is checked after it.
        ``profiles`` (a context manager) is entered around ``run_single`` only."""
        url = self.fill([("noop", {})] * tasks)
        table = self.make_table() if with_table else None
        try:
            worker, sqs_log, dynamodb_log = self.worker(url, tasks, isolate, table, SQS_TIMEOUT_S)
            with profiles or contextlib.nullcontext():
                started = time.perf_counter()
                code = worker.run_single()
                elapsed = time.perf_counter() - started
            if code != 0 or worker.tasks_run != tasks:
                raise RuntimeError(
                    f"worker exited {code} after {worker.tasks_run} of {tasks} tasks"
                )
            states = self.states(table) if table is not None else None
        finally:
            self.clean(url, table)
        if states is not None and (sum(states.values()) != tasks or states["done"] != tasks):
            raise RuntimeError(f"the table holds {dict(states)}, not {tasks} items in state done")
        operations = dynamodb_log.operations()
        return {
            "per_s": tasks / elapsed,
            "sqs_per_task": len(sqs_log.sent) / tasks,
            "dynamodb_per_task": len(dynamodb_log.sent) / tasks,
            "operations": {op: n / tasks for op, n in sorted(operations.items())},
            "states": states,
        }

    def long_run(self, seconds: float, isolate: bool) -> Dict[str, Any]:
        """One long task with the table: its heartbeats and DynamoDB requests."""
        times = Path(tempfile.mkdtemp(prefix="status-bench-")) / "times.json"
        url = self.fill([("long", {"seconds": seconds, "path": str(times)})])
        table = self.make_table()
        try:
            worker, sqs_log, dynamodb_log = self.worker(url, 1, isolate, table, LONG_SQS_TIMEOUT_S)
            code = worker.run_single()
            states = self.states(table)
        finally:
            self.clean(url, table)
        if code != 0 or worker.tasks_run != 1 or states != {"done": 1}:
            raise RuntimeError(f"long task: worker exited {code}, the table holds {dict(states)}")
        start, end = json.loads(times.read_text())
        times.unlink()
        times.parent.rmdir()
        during = dynamodb_log.operations(start, end)
        heartbeats = sqs_log.heartbeats(start, end)
        start_write = 1 if during["UpdateItem"] else 0
        extra = sum(during.values()) - start_write
        total = dynamodb_log.operations()
        return {
            "heartbeats": heartbeats,
            "status_writes": during["UpdateItem"],
            "extra_requests_per_heartbeat": extra / heartbeats if heartbeats else float("inf"),
            "dynamodb_requests": sum(total.values()),
            "dynamodb_operations": dict(sorted(total.items())),
            "ran_s": end - start,
        }


class ThreadProfiles:
    """cProfile of the main thread and, separately, of the helper threads started while on
    (each gets a profiler of its own: cProfile sees only the thread that enabled it)."""

    def __init__(self) -> None:
        self.main = cProfile.Profile()
        self.helpers: List[cProfile.Profile] = []

    def _start_in_thread(self, *_: Any) -> None:
        sys.setprofile(None)
        profiler = cProfile.Profile()
        self.helpers.append(profiler)
        profiler.enable()

    def __enter__(self) -> ThreadProfiles:
        threading.setprofile(self._start_in_thread)
        self.main.enable()
        return self

    def __exit__(self, *_: Any) -> None:
        self.main.disable()
        threading.setprofile(None)  # type: ignore[arg-type]

    def report(self, title: str, lines: int = 30) -> str:
        out = io.StringIO()
        out.write(f"== {title}: main thread ==\n")
        stats = pstats.Stats(self.main, stream=out).sort_stats("cumulative")
        stats.print_stats(r"sqstaskmaster|botocore/client.py", lines)
        if self.helpers:
            out.write(f"== {title}: {len(self.helpers)} helper thread(s), together ==\n")
            stats = pstats.Stats(*self.helpers, stream=out).sort_stats("cumulative")
            stats.print_stats(r"sqstaskmaster|botocore/client.py", lines // 2)
        return out.getvalue()


def profile_pair(bench: Bench, tasks: int) -> str:
    """Profiles of one signal-mode drain (its ``run_single`` only) without, then with the table."""
    reports = []
    for with_table in (False, True):
        profiles = ThreadProfiles()
        figures = bench.drain(tasks, isolate=False, with_table=with_table, profiles=profiles)
        title = f"signal mode {'with' if with_table else 'without'} the table"
        reports.append(profiles.report(f"{title}, {figures['per_s']:.1f} tasks/s"))
    return "\n".join(reports)


def median(runs: List[Dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def median_ratio(mine: List[Dict[str, Any]], base: List[Dict[str, Any]]) -> float:
    # Each round's pair ran back to back: their ratio cancels the machine's drift.
    return statistics.median(a["per_s"] / b["per_s"] for a, b in zip(mine, base))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=300, help="no-op tasks per drain")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; figures are medians")
    parser.add_argument("--long-s", type=float, default=12.0, help="the long task's seconds")
    parser.add_argument(
        "--profile", action="store_true", help="profile a drain without and with the table"
    )
    args = parser.parse_args()
    ways: Dict[Tuple[str, str], List[Dict[str, Any]]] = {
        (mode, table): [] for mode in ("signal", "isolated") for table in ("without", "with")
    }
    long_runs: Dict[str, Dict[str, Any]] = {}
    with sqs_server() as server:
        bench = Bench(server)
        # Warm up the server and this process's imports; the check shows the table is written.
        warm = bench.drain(20, isolate=False, with_table=True)
        print(f"warm-up: 20 tasks, the table holds {dict(warm['states'])}", flush=True)
        for number in range(1, args.rounds + 1):
            modes = ("signal", "isolated") if number % 2 else ("isolated", "signal")
            tables = ("without", "with") if number % 2 else ("with", "without")
            for mode in modes:
                for table in tables:
                    figures = bench.drain(args.tasks, mode == "isolated", table == "with")
                    ways[(mode, table)].append(figures)
                    checked = figures["states"]
                    print(
                        f"round {number} {mode:8s} {table:7s} table {figures['per_s']:7.1f} "
                        f"tasks/s, {figures['sqs_per_task']:.3f} SQS + "
                        f"{figures['dynamodb_per_task']:.3f} DynamoDB requests/task "
                        + ", ".join(f"{op} {n:.3f}" for op, n in figures["operations"].items())
                        + (f"; table: {dict(checked)}" if checked else ""),
                        flush=True,
                    )
        for mode in ("signal", "isolated"):
            figures = bench.long_run(args.long_s, isolate=mode == "isolated")
            long_runs[mode] = figures
            print(
                f"long task ({mode}, {figures['ran_s']:.1f} s): "
                f"{figures['heartbeats']} heartbeats, "
                f"{figures['status_writes']} UpdateItem while it ran, "
                f"{figures['extra_requests_per_heartbeat']:.3f} extra DynamoDB requests/heartbeat; "
                f"{figures['dynamodb_requests']} DynamoDB requests in all "
                f"{figures['dynamodb_operations']}",
                flush=True,
            )
        if args.profile:
            print(profile_pair(bench, args.tasks))

    signal, isolated = ("signal", "without"), ("isolated", "without")
    summary: Dict[str, Any] = {
        "without_table_per_s": round(median(ways[signal], "per_s"), 1),
        "with_table_per_s": round(median(ways[("signal", "with")], "per_s"), 1),
        "ratio": round(median_ratio(ways[("signal", "with")], ways[signal]), 3),
        "isolated_without_table_per_s": round(median(ways[isolated], "per_s"), 1),
        "isolated_with_table_per_s": round(median(ways[("isolated", "with")], "per_s"), 1),
        "isolated_ratio": round(median_ratio(ways[("isolated", "with")], ways[isolated]), 3),
        "sqs_requests_per_task_without": round(median(ways[signal], "sqs_per_task"), 3),
        "sqs_requests_per_task_with": round(median(ways[("signal", "with")], "sqs_per_task"), 3),
        "dynamodb_requests_per_task": round(
            median(ways[("signal", "with")], "dynamodb_per_task"), 3
        ),
        "isolated_sqs_requests_per_task_without": round(median(ways[isolated], "sqs_per_task"), 3),
        "isolated_sqs_requests_per_task_with": round(
            median(ways[("isolated", "with")], "sqs_per_task"), 3
        ),
        "isolated_dynamodb_requests_per_task": round(
            median(ways[("isolated", "with")], "dynamodb_per_task"), 3
        ),
    }
    for mode, figures in long_runs.items():
        for key in ("heartbeats", "status_writes", "dynamodb_requests", "dynamodb_operations"):
            summary[f"long_{mode}_{key}"] = figures[key]
        summary[f"long_{mode}_extra_requests_per_heartbeat"] = round(
            figures["extra_requests_per_heartbeat"], 3
        )
    worst = max(figures["extra_requests_per_heartbeat"] for figures in long_runs.values())
    summary["extra_requests_per_heartbeat"] = round(worst, 3)
    summary["targets"] = {
        "ratio": TARGET_RATIO,
        "extra_requests_per_heartbeat": TARGET_EXTRA_PER_HEARTBEAT,
    }
    summary["targets_met"] = {
        "ratio": summary["ratio"] >= TARGET_RATIO,
        "extra_requests_per_heartbeat": worst <= TARGET_EXTRA_PER_HEARTBEAT,
    }
    summary["settings"] = {
        "tasks": args.tasks,
        "rounds": args.rounds,
        "long_s": args.long_s,
        "prefetch": PREFETCH,
        "poll_wait_s": POLL_WAIT_S,
        "sqs_timeout": SQS_TIMEOUT_S,
        "long_sqs_timeout": LONG_SQS_TIMEOUT_S,
        "modes": ["signal", "isolated"],
        "table": "a fresh table per with-table run",
    }
    met = all(summary["targets_met"].values())
    print(
        f"with the table: {summary['ratio']:.3f} x without in signal mode (target >= "
        f"{TARGET_RATIO}), {summary['isolated_ratio']:.3f} x isolated; "
        f"{worst:.3f} extra DynamoDB requests per heartbeat (target <= "
        f"{TARGET_EXTRA_PER_HEARTBEAT:g}): targets {'met' if met else 'MISSED'}"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
