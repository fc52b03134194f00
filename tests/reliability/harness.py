"""Shared pieces of the reliability suite: worker subprocesses, event counts, a fault proxy."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import worker_process
from worker_process import running as running

from .apps import DIRECTORY_VARIABLE

APP = "reliability.apps:app"


def wait_for(predicate: Callable[[], Any], timeout_s: float, step_s: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something true; AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(step_s)


def report(name: str, worker_args: Sequence[str] = (), **figures: Any) -> str:
    """Print (and return) the one ``RELIABILITY:`` line a test's figures go into.

    ``worker_args`` (the worker options the test ran with) go into the line first.
    """
    if worker_args:
        figures = {"settings": "_".join(arg.lstrip("-") for arg in worker_args), **figures}
    parts = " ".join(f"{key}={value}" for key, value in figures.items())
    line = f"RELIABILITY: {name} {parts}"
    print(line)
    return line


class Events:
    """The event files the apps write: which key started, finished or was notified, how often."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def names(self, kind: str) -> List[str]:
        prefix = kind + "."
        return [name for name in os.listdir(self.directory) if name.startswith(prefix)]

    def counts(self, kind: str) -> Counter:
        """How many ``kind`` events each key has."""
        return Counter(name.split(".")[1] for name in self.names(kind))

    def times(self, kind: str, key: str) -> List[float]:
        found = []
        for name in self.names(kind):
            if name.split(".")[1] == key:
                found.append(json.loads((self.directory / name).read_text())["time"])
        return sorted(found)

    def data(self, kind: str) -> List[Dict[str, Any]]:
        """What every ``kind`` event recorded, with its key, in the order written.

        A file not yet written (read while its writer runs, or left empty by a
        kill between its creation and its write) is skipped.
        """
        found = []
        for name in self.names(kind):
            try:
                data = json.loads((self.directory / name).read_text())
            except ValueError:
                continue
            data["key"] = name.split(".")[1]
            data["order"] = int(name.split(".")[3])
            found.append(data)
        return sorted(found, key=lambda data: data["order"])

    def notified(self) -> List[Dict[str, Any]]:
        """Every notify call: its error type, text and message body."""
        found = []
        for name in self.names("notify"):
            data = json.loads((self.directory / name).read_text())
            data["type"] = name.split(".")[1]
            found.append(data)
        return found


def queue_depth(server: Any, url: str) -> int:
    """Messages in the queue, visible, in flight or delayed."""
    attributes = server.client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
    values = attributes["Attributes"]
    return sum(
        int(values.get(name, 0))
        for name in (
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        )
    )


def drain_bodies(queue: Any, rounds: int = 5) -> List[str]:
    """Receive (and keep invisible) every message of a queue; their bodies."""
    bodies: List[str] = []
    for _ in range(rounds):
        messages = queue.receive_messages(
            MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=60
        )
        bodies += [message.body for message in messages]
    return bodies


def _live_processes_where(field: int, value: int) -> List[int]:
    """Live processes whose /proc stat field ``field`` (after the name) is ``value``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[field]) == value and fields[0] not in ("Z", "X"):
            found.append(int(entry))
    return found


def children_of(pid: int) -> List[int]:
    """Live child processes of ``pid`` (Linux /proc)."""
    return _live_processes_where(1, pid)


def group_members(pgid: int) -> List[int]:
    """Live processes of process group ``pgid`` (Linux /proc)."""
    return _live_processes_where(2, pgid)


class WorkerProcess(worker_process.WorkerProcess):
    """``python -m sqstaskmaster worker reliability.apps:app``, logging to ``<log_name>.log``."""

    def __init__(
        self,
        server: Any,
        queue_url: str,
        directory: Path,
        *args: str,
        log_name: str = "worker",
        endpoint_url: Optional[str] = None,
        env: Optional[Dict[str, str]] = None,
        settings: Sequence[str] = (),
    ) -> None:
        """``settings``: more worker options (the ``worker_args`` fixture's)."""
        super().__init__(
            server,
            APP,
            queue_url,
            *args,
            *settings,
            directory_variable=DIRECTORY_VARIABLE,
            directory=directory,
            log_path=directory.parent / f"{log_name}.log",
            endpoint_url=endpoint_url,
            env=env,
        )


def event_directory(tmp_path: Path) -> Tuple[Path, Events]:
    """A new ``events`` directory below ``tmp_path`` for the apps to write to, and its reader."""
    directory = tmp_path / "events"
    directory.mkdir()
    return directory, Events(directory)


# -- the fault proxy ------------------------------------------------------------------

THROTTLE = "throttle"
SERVER_ERROR = "5xx"
_FAULT_BODIES = {
    THROTTLE: (
        400,
        "ThrottlingException",
        "Sender",
        "Rate exceeded (injected by the reliability fault proxy)",
    ),
    SERVER_ERROR: (
        500,
        "InternalError",
        "Receiver",
        "We encountered an internal error (injected by the reliability fault proxy)",
    ),
}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 that forwards SQS JSON requests to a server, or fails them.

    ``schedules`` maps SQS actions (``ReceiveMessage``, ``DeleteMessage``, …;
    the ``X-Amz-Target`` header without ``AmazonSQS.``) to a pattern cycled
    over that action's requests: ``.`` forwards, ``T`` answers 400
    ThrottlingException, ``E`` answers 500 InternalError. A pattern is
    deterministic, so back-to-back faults (which outlast botocore's own
    retries) happen at known places. ``requests`` and ``faults`` count per
    action; ``faults`` also counts per kind under ``"throttle"`` and ``"5xx"``;
    ``log`` lists ``(time.monotonic(), action, fault kind or None)`` per request.
    """

    def __init__(self, target_url: str, schedules: Dict[str, str]) -> None:
        self.target = urllib.parse.urlsplit(target_url)
        self.schedules = dict(schedules)
        self.requests: Counter = Counter()
        self.faults: Counter = Counter()
        self.log: List[tuple] = []
        self.enabled = True
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                proxy._handle(self)

            def do_GET(self) -> None:
                proxy._handle(self)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    @property
    def total_faults(self) -> int:
        return self.faults[THROTTLE] + self.faults[SERVER_ERROR]

    def _decide(self, action: str) -> Optional[str]:
        with self._lock:
            index = self.requests[action]
            self.requests[action] += 1
            pattern = self.schedules.get(action)
            kind = None
            if self.enabled and pattern:
                kind = {"T": THROTTLE, "E": SERVER_ERROR}.get(pattern[index % len(pattern)])
            if kind is not None:
                self.faults[action] += 1
                self.faults[kind] += 1
            self.log.append((time.monotonic(), action, kind))
            return kind

    def _handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        target = request.headers.get("X-Amz-Target", "")
        action = target.split(".", 1)[1] if "." in target else request.path
        kind = self._decide(action)
        if kind is not None:
            status, code, fault, text = _FAULT_BODIES[kind]
            payload = json.dumps({"__type": f"com.amazonaws.sqs#{code}", "message": text}).encode()
            self._answer(
                request,
                status,
                [
                    ("Content-Type", "application/x-amz-json-1.0"),
                    ("x-amzn-query-error", f"{code};{fault}"),
                ],
                payload,
            )
            return
        connection = http.client.HTTPConnection(
            self.target.hostname or "127.0.0.1", self.target.port, timeout=60
        )
        try:
            headers = {
                key: value for key, value in request.headers.items() if key.lower() != "host"
            }
            connection.request(request.command, request.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            forwarded = [
                (key, value)
                for key, value in response.getheaders()
                if key.lower() not in _HOP_BY_HOP
            ]
            self._answer(request, response.status, forwarded, data)
        finally:
            connection.close()

    @staticmethod
    def _answer(
        request: http.server.BaseHTTPRequestHandler,
        status: int,
        headers: Iterable[tuple],
        payload: bytes,
    ) -> None:
        request.send_response(status)
        for key, value in headers:
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        request.wfile.write(payload)
