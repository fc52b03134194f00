"""No-op tasks per second and SQS requests per task: this project against Celery and dramatiq.

One moto server (server mode, 127.0.0.1, a free port, dummy credentials: nothing
reaches AWS) runs in a subprocess of this script under a small WSGI middleware
that counts every request on the server side, by action. The same no-op
workload (``--tasks``, default 300) goes through each way in turn:

- ``celery_solo``: a Celery worker, ``-P solo`` (kombu's SQS transport), polling interval 0
  (with the default 1 s it ran 17-40 tasks/s here);
- ``celery_prefork``: a Celery worker, ``-P prefork -c 1``, polling interval 0;
- ``dramatiq``: dramatiq_sqs's broker, one ``dramatiq.Worker`` with one worker
  thread in one process (what the ``dramatiq`` command runs in each process);
- ``boto3_floor``: a bare boto3 loop: receive one message, run the task, delete it;
- ``isolated`` and ``signal``: ``sqstaskmaster worker --isolate`` and
  ``--signal-mode`` with ``--burst-tasks N``;
- ``isolated_prefetch`` and ``signal_prefetch``: the same with ``--prefetch 10``,
  only when the installed ``sqstaskmaster worker`` offers ``--prefetch``
  (otherwise their figures are null, and stderr says so); ``isolated_prefetch``
  also reuses a task child for up to 100 tasks (``--max-tasks-per-child 100``,
  when offered), the isolated path the README recommends for short tasks, as
  Celery's prefork pool reuses its children;
- ``isolated_prefetch_fork``: ``--isolate --prefetch 10`` with a fresh fork per
  task (the default ``--max-tasks-per-child 1``).

Celery and dramatiq are installed with pip into a virtual environment of their
own (``--venv DIR``, default ``sqstaskmaster-peers-venv`` in the system temp
folder, reused when it already imports them): ``celery[sqs]``, ``dramatiq`` and
``dramatiq_sqs``, never project dependencies. ``celery[sqs]`` brings pycurl,
which PyPI ships as manylinux wheels with libcurl inside (seen with pycurl
7.49 on x86_64 CPython 3.11: no system package needed); where pip has to build
it from source, install Debian's ``libcurl4-openssl-dev`` and ``libssl-dev``
first. moto, boto3 and sqstaskmaster come from the interpreter running this
script (the project's development environment).

Each run gets a fresh queue, filled with N messages by the peer's own producer
(Celery's ``Task.delay``, dramatiq's ``Actor.send``, ``TaskManager.submit_batch``,
plain bodies for the bare loop), before its worker starts. Every no-op task
appends the time (CLOCK_MONOTONIC, the same clock in every process here) to a
counter file. A run is timed from the server's receipt of the first
ReceiveMessage on its queue (start of consumption, so start-up time, which
differs a lot between peers, is left out for all) to the later of the N-th
message deleted (on the server) and the N-th task run (the counter file), so a
peer that acks before it runs (Celery's default) is timed to its last run.
Requests per task are all the requests the server received from the end of
the fill to the N-th deletion, divided by N. Runs alternate between the ways
(in a rotating order) and repeat ``--repeats`` times (default 3); the figures
are medians. Every worker logs at WARNING; the server logs no line per
request. A warm-up run (the bare loop, 20 tasks) comes first, not counted.

Usage: python benchmarks/peers.py [--tasks N] [--repeats R] [--venv DIR] [--only NAME ...]
The last line printed is one JSON object: ``<way>_per_s`` (tasks per second)
and ``<way>_requests_per_task`` for each way, ``prefetch_requests_per_task``
(the higher of the two prefetch ways', null without prefetch), the ratios of
the prefetch ways to the fastest of Celery and dramatiq, the date, machine and
package versions.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import logging
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

HOST = "127.0.0.1"
REGION = "us-east-1"
KEY = "testing"
SECRET = "testing"
PEER_REQUIREMENTS = ("celery[sqs]", "dramatiq", "dramatiq_sqs")
PEER_IMPORTS = "import celery, kombu.transport.SQS, pycurl, dramatiq, dramatiq_sqs"
PEER_DISTRIBUTIONS = ("celery", "kombu", "pycurl", "dramatiq", "dramatiq-sqs", "boto3")
OWN_DISTRIBUTIONS = ("sqstaskmaster", "moto", "boto3")
COUNTER_VARIABLE = "PEERS_COUNTER_FILE"
STATS_PATH = "/_peers/stats"
RESET_PATH = "/_peers/reset"
PREFETCH = 10
TASKS_PER_CHILD = 100
WARMUP_TASKS = 20
POLL_S = 0.02
WAYS = (
    "celery_solo",
    "celery_prefork",
    "dramatiq",
    "boto3_floor",
    "isolated",
    "signal",
    "isolated_prefetch",
    "signal_prefetch",
    "isolated_prefetch_fork",
)
PEERS = ("celery_solo", "celery_prefork", "dramatiq")
THIS_FILE = str(Path(__file__).resolve())


# --- The task every way runs (also imported by the worker subprocesses). ---


def noop(*args: Any, **kwargs: Any) -> None:
    """Nothing but a line in the counter file: the time it ran (CLOCK_MONOTONIC)."""
    fd = os.open(os.environ[COUNTER_VARIABLE], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{time.monotonic():.6f}\n".encode())
    finally:
        os.close(fd)


SQSTASKMASTER_TASKS = {"noop": noop}


# --- The counting server (``peers.py _server``, run with the project's Python). ---


class CountingMiddleware:
    """Counts the SQS requests that reach moto, by action, and times the run server-side.

    After ``/_peers/reset?target=N``: counts from zero, notes when the first
    ReceiveMessage arrives, and when the N-th message is deleted it snapshots
    the counts. ``/_peers/stats`` returns all that as JSON.
    """

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.reset(0)

    def reset(self, target: int) -> None:
        self.target = target
        self.counts: Dict[str, int] = {}
        self.first_receive_at: Optional[float] = None
        self.deleted = 0
        self.done_at: Optional[float] = None
        self.counts_at_done: Optional[Dict[str, int]] = None

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if path == STATS_PATH:
            with self.lock:
                stats = {
                    "counts": dict(self.counts),
                    "first_receive_at": self.first_receive_at,
                    "deleted": self.deleted,
                    "done_at": self.done_at,
                    "counts_at_done": self.counts_at_done,
                }
            return self.answer(start_response, stats)
        if path == RESET_PATH:
            query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
            with self.lock:
                self.reset(int(query["target"][0]))
            return self.answer(start_response, {"target": self.target})
        if path.startswith("/moto-api"):
            return self.app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        action = self.action_of(environ, body)
        arrived = time.monotonic()
        with self.lock:
            self.counts[action] = self.counts.get(action, 0) + 1
            if action == "ReceiveMessage" and self.first_receive_at is None:
                self.first_receive_at = arrived
        if action not in ("DeleteMessage", "DeleteMessageBatch"):
            return self.app(environ, start_response)
        statuses: List[str] = []

        def keep_status(status: str, headers: Any, exc_info: Any = None) -> Any:
            statuses.append(status)
            return start_response(status, headers, exc_info)

        chunks = list(self.app(environ, keep_status))
        if statuses and statuses[0].startswith("200"):
            deleted = 1
            if action == "DeleteMessageBatch":
                deleted = self.successful_entries(b"".join(chunks))
            with self.lock:
                self.deleted += deleted
                if self.done_at is None and self.target and self.deleted >= self.target:
                    self.done_at = time.monotonic()
                    self.counts_at_done = dict(self.counts)
        return chunks

    @staticmethod
    def action_of(environ: Dict[str, Any], body: bytes) -> str:
        target = environ.get("HTTP_X_AMZ_TARGET")  # JSON protocol: "AmazonSQS.ReceiveMessage"
        if target:
            return str(target).rsplit(".", 1)[-1]
        params = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))  # query protocol
        if body and "form-urlencoded" in environ.get("CONTENT_TYPE", ""):
            params.update(urllib.parse.parse_qs(body.decode("utf-8", "replace")))
        return params.get("Action", ["unknown"])[0]

    @staticmethod
    def successful_entries(body: bytes) -> int:
        try:
            return len(json.loads(body).get("Successful", []))
        except ValueError:
            return body.count(b"<DeleteMessageBatchResultEntry>")

    @staticmethod
    def answer(start_response: Callable[..., Any], data: Dict[str, Any]) -> List[bytes]:
        payload = json.dumps(data).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [payload]


def serve(port: int) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    os.environ.setdefault("MOTO_PORT", str(port))
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    app = CountingMiddleware(DomainDispatcherApplication(create_backend_app))
    # No access log line per request: the server's CPU goes to SQS alone (errors still log).
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    run_simple(HOST, port, app, threaded=True, request_handler=MotoRequestHandler)


# --- The peers' own code (run with the peers' virtual environment). ---


def celery_app(endpoint: str, queue_url: str, polling_interval: Optional[float]) -> Any:
    from celery import Celery

    host_port = endpoint.split("://", 1)[1]
    options: Dict[str, Any] = {
        "region": REGION,
        "is_secure": False,
        "predefined_queues": {
            "celery": {"url": queue_url, "access_key_id": KEY, "secret_access_key": SECRET}
        },
    }
    if polling_interval is not None:
        options["polling_interval"] = polling_interval
    app = Celery("peers", broker=f"sqs://{KEY}:{SECRET}@{host_port}")
    app.conf.update(
        broker_transport_options=options,
        task_default_queue="celery",
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    app.task(name="peers.noop")(noop)
    return app


def run_celery(args: argparse.Namespace) -> None:
    app = celery_app(args.endpoint, args.queue_url, args.polling_interval)
    if args.role == "fill":
        task = app.tasks["peers.noop"]
        for _ in range(args.tasks):
            task.delay()
        return
    app.worker_main(
        [
            "worker",
            f"--pool={args.pool}",
            "--concurrency=1",
            "--loglevel=WARNING",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
        ]
    )


def run_dramatiq(args: argparse.Namespace) -> None:
    import dramatiq
    from dramatiq_sqs import SQSBroker

    broker = SQSBroker(
        namespace=args.namespace,
        endpoint_url=args.endpoint,
        region_name=REGION,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
    )
    dramatiq.set_broker(broker)
    actor = dramatiq.actor(noop, actor_name="noop", queue_name="default", max_retries=0)
    if args.role == "fill":
        for _ in range(args.tasks):
            actor.send()
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    worker = dramatiq.Worker(broker, worker_threads=1)
    worker.start()
    stop.wait()
    worker.stop()
    broker.close()


def run_boto3_loop(args: argparse.Namespace) -> None:
    """Receive one, run it, delete it: nothing less can consume a message."""
    import boto3

    client = boto3.client(
        "sqs",
        endpoint_url=args.endpoint,
        region_name=REGION,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
    )
    done = 0
    while done < args.tasks:
        response = client.receive_message(
            QueueUrl=args.queue_url,
            AttributeNames=["All"],
            MaxNumberOfMessages=1,
            WaitTimeSeconds=1,
            VisibilityTimeout=30,
        )
        for message in response.get("Messages", []):
            noop()
            client.delete_message(QueueUrl=args.queue_url, ReceiptHandle=message["ReceiptHandle"])
            done += 1


# --- The conductor (run with the project's Python). ---


class CountingServer:
    """The counting moto server subprocess, and a boto3 client on it."""

    def __init__(self, workdir: Path) -> None:
        import boto3

        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        self.endpoint = f"http://{HOST}:{port}"
        self.log = open(workdir / "server.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, THIS_FILE, "_server", "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # Loopback only: never through a proxy named in the environment.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 30
        while True:
            try:
                self.get(STATS_PATH)
                break
            except OSError as error:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        f"the counting moto server on {self.endpoint} did not come up "
                        f"({error}); see {workdir / 'server.log'}"
                    )
                time.sleep(0.1)
        self.client = boto3.client(
            "sqs",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
        )

    def get(self, path: str) -> Dict[str, Any]:
        with self.opener.open(self.endpoint + path, timeout=10) as response:
            return dict(json.loads(response.read()))

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@dataclass
class Bench:
    """What every run needs: the server, the two interpreters, a work folder, the size."""

    server: CountingServer
    peer_python: str
    workdir: Path
    tasks: int
    timeout_s: float
    env: Dict[str, str]


@dataclass
class Queue:
    name: str
    url: str
    namespace: str  # dramatiq's: its queue is "<namespace>_default"


class RunFailed(Exception):
    """One run did not complete; the others go on."""


def peer_environment(endpoint: str) -> Dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=KEY,
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_DEFAULT_REGION=REGION,
        AWS_ENDPOINT_URL=endpoint,  # a safety net for any client built without an endpoint
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(Path(THIS_FILE).parent), os.environ.get("PYTHONPATH")])
        ),
    )
    return env


def peer_python(venv: Path) -> str:
    """The peers' interpreter: ``venv`` as it is if it imports them, else installed there."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", PEER_IMPORTS]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return str(python)
    print(f"installing {', '.join(PEER_REQUIREMENTS)} into {venv}", file=sys.stderr, flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = [str(python), "-m", "pip", "install", "--quiet", *PEER_REQUIREMENTS]
    subprocess.run(install, check=True)
    failed = subprocess.run(probe, capture_output=True, text=True)
    if failed.returncode != 0:
        raise SystemExit(
            f"{venv} still cannot import the peers after pip install ({failed.stderr.strip()}); "
            "remove it, or pass another --venv"
        )
    return str(python)


def versions(python: str, names: Iterable[str]) -> Dict[str, str]:
    code = (
        "import json, sys, importlib.metadata as m\n"
        "v = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: v[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: v[n] = None\n"
        "print(json.dumps(v))\n"
    )
    result = subprocess.run([python, "-c", code, *names], capture_output=True, text=True)
    return dict(json.loads(result.stdout)) if result.returncode == 0 else {}


@functools.cache
def supports(option: str) -> bool:
    """Whether the installed ``sqstaskmaster worker`` takes ``option``."""
    result = subprocess.run(
        [sys.executable, "-m", "sqstaskmaster", "worker", "--help"],
        capture_output=True,
        text=True,
    )
    return option in result.stdout


def make_queue(bench: Bench, way: str, repeat: int) -> Queue:
    namespace = f"peers-{way.replace('_', '-')}-{repeat}-{uuid.uuid4().hex[:6]}"
    name = f"{namespace}_default" if way == "dramatiq" else namespace
    url = bench.server.client.create_queue(QueueName=name)["QueueUrl"]
    return Queue(name=name, url=url, namespace=namespace)


def fill(bench: Bench, way: str, queue: Queue) -> None:
    """Put ``bench.tasks`` messages on the queue, in the way's own wire format."""
    n = bench.tasks
    common = ["--endpoint", bench.server.endpoint, "--tasks", str(n)]
    if way.startswith("celery"):
        command = [bench.peer_python, THIS_FILE, "_celery", "fill", "--queue-url", queue.url]
        subprocess.run(command + common, env=bench.env, check=True, capture_output=True)
    elif way == "dramatiq":
        command = [bench.peer_python, THIS_FILE, "_dramatiq", "fill"]
        command += ["--namespace", queue.namespace]
        subprocess.run(command + common, env=bench.env, check=True, capture_output=True)
    elif way == "boto3_floor":
        for first in range(0, n, 10):
            entries = [{"Id": str(i), "MessageBody": "noop"} for i in range(min(10, n - first))]
            bench.server.client.send_message_batch(QueueUrl=queue.url, Entries=entries)
    else:
        import boto3

        from sqstaskmaster.task_manager import TaskManager

        sqs = boto3.resource(
            "sqs",
            endpoint_url=bench.server.endpoint,
            region_name=REGION,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
        )
        TaskManager(queue.url, sqs=sqs).submit_batch([("noop", {})] * n)
    deadline = time.monotonic() + 60
    while True:
        attributes = bench.server.client.get_queue_attributes(
            QueueUrl=queue.url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        visible = int(attributes["ApproximateNumberOfMessages"])
        if visible == n:
            return
        if time.monotonic() > deadline:
            raise RunFailed(f"{way}: the queue {queue.name} holds {visible} messages, not {n}")
        time.sleep(0.1)


def worker_command(bench: Bench, way: str, queue: Queue) -> List[str]:
    endpoint = bench.server.endpoint
    if way.startswith("celery"):
        command = [bench.peer_python, THIS_FILE, "_celery", "work", "--queue-url", queue.url]
        command += ["--endpoint", endpoint]
        if way == "celery_solo":
            return command + ["--pool", "solo", "--polling-interval", "0"]
        return command + ["--pool", "prefork", "--polling-interval", "0"]
    if way == "dramatiq":
        command = [bench.peer_python, THIS_FILE, "_dramatiq", "work"]
        return command + ["--namespace", queue.namespace, "--endpoint", endpoint]
    if way == "boto3_floor":
        command = [sys.executable, THIS_FILE, "_boto3", "--queue-url", queue.url]
        return command + ["--endpoint", endpoint, "--tasks", str(bench.tasks)]
    command = [sys.executable, "-m", "sqstaskmaster", "--log-level", "WARNING", "worker"]
    command += [f"{Path(THIS_FILE).stem}:SQSTASKMASTER_TASKS", "--queue-url", queue.url]
    command += ["--endpoint-url", endpoint, "--region", REGION]
    command += ["--signal-mode" if way.startswith("signal") else "--isolate"]
    command += ["--burst-tasks", str(bench.tasks)]
    if "_prefetch" in way:
        command += ["--prefetch", str(PREFETCH)]
    if way == "isolated_prefetch" and supports("--max-tasks-per-child"):
        command += ["--max-tasks-per-child", str(TASKS_PER_CHILD)]
    return command


def exits_by_itself(way: str) -> bool:
    return not (way.startswith("celery") or way == "dramatiq")


def stop(process: subprocess.Popen[bytes], wait_first_s: float) -> None:
    """End a worker we started (its whole process group: Celery's pool children too)."""
    try:
        process.wait(timeout=wait_first_s)
        return
    except subprocess.TimeoutExpired:
        pass
    for sig, grace_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def read_times(counter: Path) -> List[float]:
    try:
        return [float(line) for line in counter.read_text().split()]
    except FileNotFoundError:
        return []


def measure(bench: Bench, way: str, repeat: int) -> Dict[str, Any]:
    """One run of one way: fill, start the worker, wait for all N done, figures."""
    n = bench.tasks
    queue = make_queue(bench, way, repeat)
    try:
        fill(bench, way, queue)
        counter = bench.workdir / f"{queue.name}.count"
        log_path = bench.workdir / f"{queue.name}.log"
        bench.server.get(f"{RESET_PATH}?target={n}")
        env = dict(bench.env, **{COUNTER_VARIABLE: str(counter)})
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                worker_command(bench, way, queue),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                stats = wait_done(bench, way, process, counter, log_path)
            finally:
                stop(process, 30.0 if exits_by_itself(way) else 0.0)
        times = sorted(read_times(counter))
        start = stats["first_receive_at"]
        end = max(stats["done_at"], times[n - 1])
        counts = stats["counts_at_done"]
        return {
            "per_s": n / (end - start),
            "requests_per_task": sum(counts.values()) / n,
            "counts": counts,
            "ran": len(times),
        }
    finally:
        bench.server.client.delete_queue(QueueUrl=queue.url)


def wait_done(
    bench: Bench, way: str, process: subprocess.Popen[bytes], counter: Path, log_path: Path
) -> Dict[str, Any]:
    n = bench.tasks
    deadline = time.monotonic() + bench.timeout_s
    exited_at: Optional[float] = None
    while True:
        ran = len(read_times(counter))
        if ran >= n:
            stats = bench.server.get(STATS_PATH)
            if stats["done_at"] is not None:
                return stats
        if exited_at is None and process.poll() is not None:
            exited_at = time.monotonic()
        # A worker that exited may still have a line or a deletion in flight: 2 s more.
        if (exited_at is not None and time.monotonic() - exited_at > 2.0) or (
            time.monotonic() > deadline
        ):
            stats = bench.server.get(STATS_PATH)
            tail = log_path.read_text(errors="replace")[-2000:]
            why = f"exited with code {process.returncode}" if exited_at else "timed out"
            raise RunFailed(
                f"{way}: the worker {why} after {ran} of {n} tasks run and "
                f"{stats['deleted']} deleted (requests {stats['counts']}); its log ends:\n{tail}"
            )
        time.sleep(POLL_S)


def median(values: List[float], digits: int) -> Optional[float]:
    return round(statistics.median(values), digits) if values else None


def summarize(
    results: Dict[str, List[Dict[str, Any]]], args: argparse.Namespace, extra: Dict[str, Any]
) -> Dict[str, Any]:
    summary: Dict[str, Any] = {}
    for way in WAYS:
        summary[f"{way}_per_s"] = median([r["per_s"] for r in results.get(way, [])], 1)
    for way in WAYS:
        summary[f"{way}_requests_per_task"] = median(
            [r["requests_per_task"] for r in results.get(way, [])], 3
        )
    prefetch = [
        summary[f"{way}_requests_per_task"]
        for way in ("isolated_prefetch", "signal_prefetch", "isolated_prefetch_fork")
        if summary[f"{way}_requests_per_task"] is not None
    ]
    summary["prefetch_requests_per_task"] = max(prefetch) if prefetch else None
    peers = {way: summary[f"{way}_per_s"] for way in PEERS if summary[f"{way}_per_s"]}
    fastest = max(peers, key=lambda way: peers[way]) if peers else None
    summary["fastest_peer"] = fastest
    for way in (
        "isolated_prefetch",
        "signal_prefetch",
        "isolated_prefetch_fork",
        "isolated",
        "signal",
    ):
        mine = summary[f"{way}_per_s"]
        ratio = round(mine / peers[fastest], 3) if mine and fastest else None
        summary[f"{way}_vs_fastest_peer"] = ratio
    summary.update(tasks=args.tasks, repeats=args.repeats, **extra)
    return summary


def conduct(args: argparse.Namespace) -> None:
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    ways = list(args.only or WAYS)
    unknown = sorted(set(ways) - set(WAYS))
    if unknown:
        raise SystemExit(f"--only: unknown way(s) {unknown}; choose among {list(WAYS)}")
    prefetch = supports("--prefetch")
    if not prefetch:
        skipped = [way for way in ways if "_prefetch" in way]
        ways = [way for way in ways if "_prefetch" not in way]
        if skipped:
            print(
                "the installed sqstaskmaster worker has no --prefetch: "
                f"{', '.join(skipped)} not run (reported as null)",
                file=sys.stderr,
                flush=True,
            )
    python = peer_python(Path(args.venv))
    workdir = Path(tempfile.mkdtemp(prefix="sqstaskmaster-peers-"))
    server = CountingServer(workdir)
    results: Dict[str, List[Dict[str, Any]]] = {way: [] for way in ways}
    failed = 0
    try:
        bench = Bench(
            server=server,
            peer_python=python,
            workdir=workdir,
            tasks=args.tasks,
            timeout_s=args.timeout or 60.0 + args.tasks * 0.5,
            env=peer_environment(server.endpoint),
        )
        measure(replace(bench, tasks=min(WARMUP_TASKS, args.tasks)), "boto3_floor", 0)
        for repeat in range(1, args.repeats + 1):
            shift = (repeat - 1) % len(ways)
            for way in ways[shift:] + ways[:shift]:
                try:
                    figures = measure(bench, way, repeat)
                except (RunFailed, subprocess.CalledProcessError) as error:
                    failed += 1
                    detail = getattr(error, "stderr", None) or b""
                    print(f"repeat {repeat} {way}: FAILED: {error}", file=sys.stderr, flush=True)
                    if detail:
                        print(detail.decode(errors="replace")[-2000:], file=sys.stderr)
                    continue
                results[way].append(figures)
                counts = ", ".join(f"{k} {v}" for k, v in sorted(figures["counts"].items()))
                print(
                    f"repeat {repeat} {way:17s} {figures['per_s']:7.1f} tasks/s "
                    f"{figures['requests_per_task']:5.2f} requests/task ({counts})",
                    flush=True,
                )
    finally:
        server.close()
        if args.keep:
            print(f"logs and counter files kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    extra = {
        "failed_runs": failed,
        "prefetch_supported": prefetch,
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "peer_versions": versions(python, PEER_DISTRIBUTIONS),
        "versions": versions(sys.executable, OWN_DISTRIBUTIONS),
    }
    print(json.dumps(summarize(results, args, extra)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=300, help="tasks per run (300)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each way (3)")
    parser.add_argument(
        "--venv",
        default=str(Path(tempfile.gettempdir()) / "sqstaskmaster-peers-venv"),
        help="the peers' virtual environment (made if missing, reused if present)",
    )
    parser.add_argument("--only", nargs="+", metavar="WAY", help=f"among {', '.join(WAYS)}")
    parser.add_argument("--timeout", type=float, help="seconds one run may take")
    parser.add_argument("--keep", action="store_true", help="keep the logs and counter files")
    # Roles of the subprocesses this script starts (not for direct use).
    roles = parser.add_subparsers(dest="command")
    server = roles.add_parser("_server")
    server.add_argument("--port", type=int, required=True)
    for name in ("_celery", "_dramatiq", "_boto3"):
        role = roles.add_parser(name)
        if name != "_boto3":
            role.add_argument("role", choices=("fill", "work"))
        role.add_argument("--endpoint", required=True)
        role.add_argument("--queue-url")
        role.add_argument("--namespace")
        role.add_argument("--tasks", type=int, default=0)
        role.add_argument("--pool", default="solo")
        role.add_argument("--polling-interval", type=float)
    args = parser.parse_args()
    if args.command == "_server":
        serve(args.port)
    elif args.command == "_celery":
        run_celery(args)
    elif args.command == "_dramatiq":
        run_dramatiq(args)
    elif args.command == "_boto3":
        run_boto3_loop(args)
    else:
        conduct(args)


if __name__ == "__main__":
    main()
