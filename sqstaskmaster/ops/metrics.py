"""Prometheus metrics of a worker (``Worker(metrics_port=...)``, ``--metrics-port``).

Needs the optional extra ``sqstaskmaster[metrics]`` (prometheus_client),
imported only when metrics are turned on. While they are off, every hook here
(:func:`task_started`, :func:`task_ended`, :func:`heartbeat`, ...) is a call
that returns at once.

One process (``processes=1``): the worker serves its own registry. Several
(:mod:`sqstaskmaster.worker.supervisor`): the supervisor makes a private temporary
folder, points ``PROMETHEUS_MULTIPROC_DIR`` at it, serves one endpoint that
sums every process's files (prometheus_client's multiprocess mode) and
removes the folder at exit. A dead process's counters and histograms stay in
the sums; its gauges are dropped.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import tempfile
import threading
import wsgiref.simple_server
from typing import Any, Dict, Optional, Union

from ..errors import SQSTaskMasterError
from .logformat import add_to_context

logger = logging.getLogger(__name__)

PREFIX = "sqstaskmaster_"
EXTRA = "sqstaskmaster[metrics]"


class Outcome(str, enum.Enum):
    """How one message ended: the worker's one vocabulary, in its log fields and metric labels."""

    DONE = "done"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    REFUSED = "refused"
    UNKNOWN = "unknown"
    INVALID = "invalid"
    HANDED_BACK = "handed_back"
    REJECTED = "rejected"
    RETRIED_BY_TASK = "retried_by_task"
    CONTINUED = "continued"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def phrase(self) -> str:
        """The words of the worker's log line for this outcome."""
        return _PHRASES.get(self, self.value)


_PHRASES = {
    Outcome.TIMED_OUT: "timed out",
    Outcome.HANDED_BACK: "interrupted by shutdown",
    Outcome.RETRIED_BY_TASK: "retry asked by the task",
    Outcome.CONTINUED: "stopped to go on in a continuation message",
    Outcome.CANCELLED: "cancelled",
}
_BY_WORDS = {**{o.phrase: o for o in Outcome}, **{o.value: o for o in Outcome}}

#: Labels of ``sqstaskmaster_tasks_total``'s ``outcome``.
OUTCOMES = tuple(outcome.value for outcome in Outcome)

#: Task durations, seconds: 0.1 s to 12 hours.
DURATION_BUCKETS = (
    0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 43200,
)  # fmt: skip
#: Seconds from a hard deadline to the task being stopped.
OVERSHOOT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)


class MetricsUnavailableError(SQSTaskMasterError, ImportError):
    """Metrics were asked for, but prometheus_client is not installed."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"Worker metrics need prometheus_client, which cannot be imported ({reason}). "
            f"Install the extra: pip install '{EXTRA}', or run without --metrics-port."
        )


def outcome_label(outcome: Union[str, Outcome]) -> str:
    """The ``outcome`` label of an :class:`Outcome`, its value or its log phrase."""
    known = _BY_WORDS.get(str(outcome))
    return known.value if known is not None else str(outcome).replace(" ", "_")


class _Metrics:
    """The metric objects of this process."""

    def __init__(self, prometheus: Any, registry: Any) -> None:
        counter, gauge, histogram = prometheus.Counter, prometheus.Gauge, prometheus.Histogram
        self.tasks = counter(
            PREFIX + "tasks",
            "Tasks (messages) handled, by task name and outcome",
            ["task", "outcome"],
            registry=registry,
        )
        self.duration = histogram(
            PREFIX + "task_duration_seconds",
            "Seconds a task ran, by task name and outcome",
            ["task", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.in_progress = gauge(
            PREFIX + "tasks_in_progress",
            "Tasks running now",
            ["task"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.heartbeats = counter(
            PREFIX + "heartbeats", "Heartbeats (visibility extensions) tried", registry=registry
        )
        self.heartbeat_failures = counter(
            PREFIX + "heartbeat_failures",
            "Heartbeats whose visibility change SQS or the network refused",
            registry=registry,
        )
        self.overshoot = histogram(
            PREFIX + "hard_timeout_overshoot_seconds",
            "Seconds from a task's hard deadline to the task being stopped",
            buckets=OVERSHOOT_BUCKETS,
            registry=registry,
        )
        self.poll_failures = counter(
            PREFIX + "poll_failures", "Polls of the queue that failed", registry=registry
        )
        self.restarts = counter(
            PREFIX + "worker_restarts", "Worker processes restarted after dying", registry=registry
        )
        self.checkpoints = counter(
            PREFIX + "checkpoints",
            "Checkpoints tasks saved, by task name",
            ["task"],
            registry=registry,
        )
        self.status_failures = counter(
            PREFIX + "status_table_failures",
            "Status table requests that failed, by kind of failure (the tasks went on)",
            ["kind"],
            registry=registry,
        )


_metrics: Optional[_Metrics] = None
_server: Any = None
_multiprocess_dir: Optional[str] = None
_previous_dir: Optional[str] = None


def _import_prometheus() -> Any:
    try:
        import prometheus_client
        import prometheus_client.values
    except ImportError as error:
        raise MetricsUnavailableError(str(error)) from error
    return prometheus_client


def require() -> None:
    """Raise :class:`MetricsUnavailableError` (naming the extra) if prometheus_client is missing."""
    _import_prometheus()


def enabled() -> bool:
    """Whether this process records metrics."""
    return _metrics is not None


# How often the endpoint's thread looks for a stop: stop_serving() waits up to this long.
_SERVE_POLL_S = 0.05


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("metrics scrape: " + format, *args)


def _listen(prometheus: Any, port: int, host: str, registry: Any) -> None:
    global _server
    try:
        server = wsgiref.simple_server.make_server(
            host, port, prometheus.make_wsgi_app(registry), handler_class=_QuietHandler
        )
        threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _SERVE_POLL_S},
            name="sqstaskmaster-metrics",
            daemon=True,
        ).start()
    except OSError as error:
        raise OSError(
            error.errno,
            f"cannot serve metrics on {host}:{port} ({error.strerror or error}); "
            "choose a free port with --metrics-port (metrics_port)",
        ) from error
    _server = server
    logger.info("metrics on http://%s:%d/metrics", host, server.server_address[1])


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Record metrics in this process and serve them on ``host:port`` (one process)."""
    global _metrics
    prometheus = _import_prometheus()
    registry = prometheus.CollectorRegistry(auto_describe=True)
    _metrics = _Metrics(prometheus, registry)
    _listen(prometheus, port, host, registry)


def serve_unless_supervised(port: Optional[int], host: str) -> bool:
    """A worker's start: serve on ``port`` unless off (None) or its supervisor serves.

    Returns whether it started serving (then :func:`stop_serving` it at the end).
    """
    if port is None or enabled():
        return False
    serve(port, host)
    return True


def serve_multiprocess(port: int, host: str = "127.0.0.1") -> None:
    """In a supervisor: set up multiprocess mode for the workers it forks, and serve their sum."""
    global _metrics, _multiprocess_dir, _previous_dir
    prometheus = _import_prometheus()
    _multiprocess_dir = tempfile.mkdtemp(prefix="sqstaskmaster-metrics-")
    _previous_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _multiprocess_dir
    # prometheus_client picks its value class at import; it may have been
    # imported before the folder existed.
    values = prometheus.values
    if not getattr(values.ValueClass, "__name__", "") == "MmapedValue":
        values.ValueClass = values.MultiProcessValue()
    from prometheus_client import multiprocess

    registry = prometheus.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=_multiprocess_dir)
    # Not registered anywhere: each process writes its own files, summed on scrape.
    _metrics = _Metrics(prometheus, None)
    try:
        _listen(prometheus, port, host, registry)
    except BaseException:
        stop_serving()
        raise


def in_forked_worker() -> None:
    """In a worker process forked by the supervisor: keep recording, but do not serve."""
    global _server
    if _server is not None:
        # Only this process's copy of the listening socket; the parent goes on serving.
        _server.socket.close()
        _server = None


def process_died(pid: int) -> None:
    """Drop a dead worker process's gauges (its counters stay in the sums)."""
    if _multiprocess_dir is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, _multiprocess_dir)


def stop_serving() -> None:
    """Stop serving and recording; remove the multiprocess folder, if any."""
    global _metrics, _server, _multiprocess_dir, _previous_dir
    server, _server = _server, None
    _metrics = None
    if server is not None:
        server.shutdown()
        server.server_close()
    if _multiprocess_dir is not None:
        shutil.rmtree(_multiprocess_dir, ignore_errors=True)
        if _previous_dir is None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = _previous_dir
        _multiprocess_dir = _previous_dir = None


def address() -> Optional[Dict[str, Any]]:
    """``{"host": ..., "port": ...}`` of the endpoint this process serves, or None."""
    if _server is None:
        return None
    host, port = _server.server_address[:2]
    return {"host": host, "port": port}


# -- hooks (no-ops while metrics are off) ----------------------------------------------


def record_outcome(
    task: Optional[str], outcome: Outcome, duration_s: Optional[float] = None
) -> None:
    """A message was handled: to the metrics, and to the log fields (:mod:`.logformat`).

    ``duration_s`` is given for a task that ran (after :func:`task_started`).
    """
    ran = duration_s is not None
    task_ended(task, outcome, duration_s, ran=ran)
    fields: Dict[str, Any] = {"outcome": outcome_label(outcome)}
    if ran:
        fields["duration_s"] = round(duration_s or 0.0, 3)
    add_to_context(**fields)


def task_started(task: str) -> None:
    """A task began to run."""
    if _metrics is not None:
        _metrics.in_progress.labels(task).inc()


def task_ended(
    task: Optional[str],
    outcome: Union[str, Outcome],
    duration_s: Optional[float] = None,
    ran: bool = False,
) -> None:
    """A message was handled: count its outcome; ``ran`` after :func:`task_started`."""
    if _metrics is None:
        return
    name = task if isinstance(task, str) else ""
    label = outcome_label(outcome)
    _metrics.tasks.labels(name, label).inc()
    if duration_s is not None:
        _metrics.duration.labels(name, label).observe(duration_s)
    if ran:
        _metrics.in_progress.labels(name).dec()


def heartbeat(ok: bool) -> None:
    """A heartbeat was tried; ``ok`` is False when its visibility change failed."""
    if _metrics is not None:
        _metrics.heartbeats.inc()
        if not ok:
            _metrics.heartbeat_failures.inc()


def hard_timeout_overshoot(seconds: float) -> None:
    """A task was stopped ``seconds`` after its hard deadline."""
    if _metrics is not None:
        _metrics.overshoot.observe(max(0.0, seconds))


def checkpoints_saved(task: str, count: int) -> None:
    """A task's run saved ``count`` checkpoints."""
    if _metrics is not None and count > 0:
        _metrics.checkpoints.labels(task).inc(count)


def poll_failed() -> None:
    """A poll of the queue failed."""
    if _metrics is not None:
        _metrics.poll_failures.inc()


def worker_restarted() -> None:
    """The supervisor restarted a worker process that died."""
    if _metrics is not None:
        _metrics.restarts.inc()


def status_table_failed(kind: str) -> None:
    """A status table request failed (``kind``: timeout, throttled, refused, ...)."""
    if _metrics is not None:
        _metrics.status_failures.labels(kind).inc()
