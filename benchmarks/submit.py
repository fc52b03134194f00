"""How fast can a script enqueue many tasks, and in how many SQS requests?

Against moto's server mode on 127.0.0.1 (one server for the whole run, a
fresh queue for every measurement), enqueue the same tasks four ways:

(a) ``TaskManager.submit`` in a loop: one SendMessage request per task, as 0.0.11 does;
(b) ``TaskManager.submit_batch`` as a user calls it: SendMessageBatch, 10
    messages per request, every message encoded, measured and checked first,
    one request after the other (the default);
(b4) the same with ``max_in_flight=4``: up to 4 requests in flight at once;
(c) a bare boto3 ``send_message_batch`` loop over the same bodies and
    attributes, built before the clock starts, one request after the other:
    the floor for sequential sending on this server, which (b) can only
    approach and (b4) could pass by overlapping requests.

Requests are counted with a botocore ``before-send.sqs.*`` hook on the client,
so they are HTTP requests actually made (from any thread). The one
GetQueueAttributes call a TaskManager makes to learn the queue's
MaximumMessageSize happens (and is reported) before the clock starts, like
building the TaskManager itself.
Targets: (b) at least 5 x (a), at least 0.8 x (c), and 100 requests per
1,000 tasks.

moto's SendMessage costs time in proportion to the queue's depth (every
message sent recomputes the queue's attributes over all its messages), which
real SQS does not; left alone, that cost swamps what is measured here. So the
tasks go, ``--segment`` at a time, to a fresh queue each (made before the clock
starts and deleted after it stops), and only the sending is timed. moto also
spends about a millisecond of its own CPU on every message whatever the
request (about 1 s per 1,000 messages, against about 0.3 s for the client's
botocore serialization and parsing), and its one process is bound by its GIL,
so overlapping requests gains next to nothing here: (b4) is about (b), and
(c) / (a) is this server's ceiling for (b) / (a). Against real SQS, where
each request waits a network round trip of 10 to 30 ms, it gains far more:
``--rtt-ms 20`` adds a 20 ms pause before every request of every way (a
botocore ``before-send`` hook, in the sending thread) to show that case; its
figures are labelled simulated and are not the issue's targets.

Usage: python benchmarks/submit.py [--tasks N] [--rounds R] [--segment S] [--rtt-ms MS]
The last line printed is one JSON object with the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from datetime import date
from typing import Any, Callable, Dict, List, Tuple

from sqstaskmaster.task_manager import TaskManager, encode_body, service_name_attribute
from sqstaskmaster.testing import SQSServer, sqs_server

SENDER = "benchmark"


class RequestCounter:
    """Counts the HTTP requests an SQS client makes, by operation."""

    def __init__(self) -> None:
        self.by_operation: Dict[str, int] = {}
        self.lock = threading.Lock()  # (b4) sends from several threads

    def __call__(self, request: Any, **kwargs: Any) -> None:
        target = request.headers.get("X-Amz-Target", b"").decode() or "unknown"
        operation = target.rsplit(".", 1)[-1]
        with self.lock:
            self.by_operation[operation] = self.by_operation.get(operation, 0) + 1

    def total(self) -> int:
        return sum(self.by_operation.values())

    def reset(self) -> None:
        self.by_operation.clear()


def make_tasks(count: int) -> List[Tuple[str, Dict[str, Any]]]:
    return [
        (
            "resize_image",
            {"image_id": i, "bucket": "photos", "sizes": [64, 256, 1024], "day": date(2025, 1, 1)},
        )
        for i in range(count)
    ]


def run_submit_loop(
    server: SQSServer, sqs: Any, tasks: List[Tuple[str, Dict[str, Any]]]
) -> Tuple[Callable[[], None], str]:
    tm = TaskManager(server.make_queue().url, sqs=sqs, sender_name=SENDER)

    def go() -> None:
        for task, kwargs in tasks:
            tm.submit(task, **kwargs)

    return go, tm.url


def run_batch(
    server: SQSServer, sqs: Any, tasks: List[Tuple[str, Dict[str, Any]]]
) -> Tuple[Callable[[], None], str]:
    tm = TaskManager(server.make_queue().url, sqs=sqs, sender_name=SENDER)
    tm.queue_limits()  # the one GetQueueAttributes, before the clock starts

    def go() -> None:
        ids = tm.submit_batch(tasks)  # the default: up to 4 requests in flight
        assert len(ids) == len(tasks)

    return go, tm.url


def run_batch_concurrent(
    server: SQSServer, sqs: Any, tasks: List[Tuple[str, Dict[str, Any]]]
) -> Tuple[Callable[[], None], str]:
    tm = TaskManager(server.make_queue().url, sqs=sqs, sender_name=SENDER)
    tm.queue_limits()

    def go() -> None:
        ids = tm.submit_batch(tasks, max_in_flight=4)
        assert len(ids) == len(tasks)

    return go, tm.url


def run_boto3_batch(
    server: SQSServer, sqs: Any, tasks: List[Tuple[str, Dict[str, Any]]]
) -> Tuple[Callable[[], None], str]:
    url = server.make_queue().url
    client = sqs.meta.client
    attributes = service_name_attribute(SENDER)
    entries = [
        {"Id": str(i), "MessageBody": encode_body(task, kwargs), "MessageAttributes": attributes}
        for i, (task, kwargs) in enumerate(tasks)
    ]
    chunks = [entries[start : start + 10] for start in range(0, len(entries), 10)]

    def go() -> None:
        for chunk in chunks:
            response = client.send_message_batch(QueueUrl=url, Entries=chunk)
            assert not response.get("Failed")

    return go, url


Setup = Callable[[SQSServer, Any, List[Tuple[str, Dict[str, Any]]]], Tuple[Callable[[], None], str]]
WAYS: Dict[str, Setup] = {
    "submit": run_submit_loop,
    "batch": run_batch,
    "batch4": run_batch_concurrent,
    "boto3_batch": run_boto3_batch,
}


def measure(
    server: SQSServer,
    sqs: Any,
    counter: RequestCounter,
    setup: Setup,
    tasks: List[Any],
    segment: int,
) -> Tuple[float, float]:
    """(tasks per second, requests per 1,000 tasks) for one way, ``segment`` tasks per queue."""
    elapsed = 0.0
    requests = 0
    for start in range(0, len(tasks), segment):
        go, url = setup(server, sqs, tasks[start : start + segment])
        counter.reset()
        began = time.perf_counter()
        go()
        elapsed += time.perf_counter() - began
        requests += counter.total()
        sqs.meta.client.delete_queue(QueueUrl=url)  # keep the server lean
    return len(tasks) / elapsed, requests * 1000 / len(tasks)


def verdict(met: bool) -> str:
    return "OK" if met else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="measurements of each way")
    parser.add_argument("--segment", type=int, default=20, help="tasks per fresh queue")
    parser.add_argument(
        "--rtt-ms", type=float, default=0.0, help="simulated network round trip per request"
    )
    args = parser.parse_args()

    tasks = make_tasks(args.tasks)
    rates: Dict[str, List[float]] = {name: [] for name in WAYS}
    requests: Dict[str, List[float]] = {name: [] for name in WAYS}
    with sqs_server() as server:
        sqs = server.session.resource("sqs", endpoint_url=server.endpoint_url)
        counter = RequestCounter()
        sqs.meta.client.meta.events.register("before-send.sqs.*", counter)
        if args.rtt_ms > 0:
            sqs.meta.client.meta.events.register(
                "before-send.sqs.*", lambda **kwargs: time.sleep(args.rtt_ms / 1000)
            )
            print(f"SIMULATED: every request waits {args.rtt_ms:g} ms before it is sent")

        # Warm up connections and botocore's caches with every way once.
        for setup in WAYS.values():
            measure(server, sqs, counter, setup, tasks[:50], args.segment)
        counter.reset()
        TaskManager(server.make_queue().url, sqs=sqs).queue_limits()
        print(f"a TaskManager's one-time size lookup: {counter.by_operation} (untimed)")

        names = list(WAYS)
        for round_number in range(args.rounds):
            # rotate the order so that no way always runs first on a busy machine
            shift = round_number % len(names)
            order = names[shift:] + names[:shift]
            line = []
            for name in order:
                rate, per_1000 = measure(server, sqs, counter, WAYS[name], tasks, args.segment)
                rates[name].append(rate)
                requests[name].append(per_1000)
                line.append(f"{name} {rate:8.0f} tasks/s {per_1000:6.1f} req/1000")
            print(f"round {round_number + 1}: " + " | ".join(line))

    medians = {name: statistics.median(values) for name, values in rates.items()}
    per_1000 = {name: statistics.median(values) for name, values in requests.items()}
    batch_requests = per_1000["batch"]
    vs_submit = medians["batch"] / medians["submit"]
    vs_boto3 = medians["batch"] / medians["boto3_batch"]
    print(
        f"{args.tasks} tasks ({args.segment} per queue) x {args.rounds} rounds, medians: "
        f"(a) submit {medians['submit']:.0f}/s ({per_1000['submit']:.0f} req/1000), "
        f"(b) batch {medians['batch']:.0f}/s ({batch_requests:.0f} req/1000), "
        f"(b4) batch max_in_flight=4 {medians['batch4']:.0f}/s ({per_1000['batch4']:.0f} "
        f"req/1000), (c) boto3 batch {medians['boto3_batch']:.0f}/s "
        f"({per_1000['boto3_batch']:.0f} req/1000)"
    )
    print(
        f"(b) / (a) = {vs_submit:.1f} x (target >= 5) {verdict(vs_submit >= 5)}; "
        f"(b) / (c) = {vs_boto3:.2f} x (target >= 0.8) {verdict(vs_boto3 >= 0.8)}; "
        f"{batch_requests:.0f} requests per 1,000 tasks (target 100) "
        f"{verdict(batch_requests <= 100)}"
    )
    print(
        f"(b4) / (a) = {medians['batch4'] / medians['submit']:.1f} x; "
        f"(b4) / (c) = {medians['batch4'] / medians['boto3_batch']:.2f} x; "
        f"(c) / (a) = {medians['boto3_batch'] / medians['submit']:.1f} x "
        "(the ceiling for sequential batches on this server)"
    )
    print(
        json.dumps(
            {
                "submit_per_s": round(medians["submit"], 1),
                "batch_per_s": round(medians["batch"], 1),
                "boto3_batch_per_s": round(medians["boto3_batch"], 1),
                "batch_requests_per_1000": round(batch_requests, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
