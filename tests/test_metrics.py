"""Prometheus metrics: the no-op hooks, the missing extra, and a 2-process worker scraped over HTTP.

The end-to-end test runs ``sqstaskmaster worker worker_apps:watched -p 2
--metrics-port P --log-format json`` against moto with a task of every
outcome, SIGTERMs one worker process mid-task (handed back) and kill -9s
another mid-task (restarted), and checks after each step that the scraped
counts equal what happened, and that every log line is JSON with the task fields.
A resumable task crossing ``--continue-after`` is counted the same way, isolated
(a fresh or a reused child) and in signal mode.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families
from worker_process import WorkerProcess, wait_for

from sqstaskmaster.ops import metrics
from sqstaskmaster.testing import free_port

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def scrape(port: int) -> Optional[Samples]:
    """Every sample on the endpoint, parsed by prometheus_client; None while it is down."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def tasks_total(samples: Samples) -> Dict[Tuple[str, str], int]:
    """``sqstaskmaster_tasks_total`` as {(task, outcome): count}, zeros left out."""
    found = {}
    for (name, labels), value in samples.items():
        if name == "sqstaskmaster_tasks_total" and value:
            found[(dict(labels)["task"], dict(labels)["outcome"])] = int(value)
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def in_progress(samples: Samples) -> float:
    return sum(v for (name, _), v in samples.items() if name == "sqstaskmaster_tasks_in_progress")


def task_pid(directory: Path, key: str) -> int:
    """The worker process running task ``key`` (its isolated child's parent)."""
    paths = [p for p in directory.glob(f"start.{key}.*") if not p.name.endswith(".tmp")]
    return int(json.loads(paths[0].read_text())["ppid"]) if paths else 0


# -- hooks and errors ------------------------------------------------------------


def test_metrics_off_imports_nothing_and_hooks_do_nothing() -> None:
    code = (
        "import sys, sqstaskmaster.worker.loop, sqstaskmaster.worker.supervisor\n"
        "from sqstaskmaster.ops import metrics\n"
        "metrics.task_started('t'); metrics.task_ended('t', 'done', 1.0, ran=True)\n"
        "metrics.heartbeat(False); metrics.hard_timeout_overshoot(1.0); metrics.poll_failed()\n"
        "metrics.worker_restarted()\n"
        "assert not metrics.enabled()\n"
        "assert 'prometheus_client' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_missing_prometheus_client_names_the_extra(monkeypatch: Any) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(metrics.MetricsUnavailableError, match=r"sqstaskmaster\[metrics\]"):
        metrics.serve(0)
    assert not metrics.enabled()


def test_cli_without_the_extra_exits_ret_usage(
    sqs_server: Any, sqs_queue: Any, tmp_path: Path
) -> None:
    # A prometheus_client that cannot be imported, first on the path.
    (tmp_path / "prometheus_client.py").write_text("raise ImportError('not installed here')\n")
    env = dict(os.environ, **sqs_server.environment)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "sqstaskmaster", "worker", "worker_apps:app"]
    command += ["--queue-url", sqs_queue.url, "--metrics-port", str(free_port())]
    result = subprocess.run(
        command,
        cwd=str(Path(__file__).parent),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "pip install 'sqstaskmaster[metrics]'" in result.stderr


@pytest.mark.parametrize(
    "outcome, label",
    [
        ("done", "done"),
        ("failed", "failed"),
        ("timed out", "timed_out"),
        ("interrupted by shutdown", "handed_back"),
        ("handed_back", "handed_back"),
        ("retry asked by the task", "retried_by_task"),
        ("refused", "refused"),
        ("unknown", "unknown"),
        ("invalid", "invalid"),
        ("rejected", "rejected"),
        ("retried_by_task", "retried_by_task"),
        ("stopped to go on in a continuation message", "continued"),
        ("continued", "continued"),
    ],
)
def test_outcome_labels(outcome: str, label: str) -> None:
    assert metrics.outcome_label(outcome) == label
    assert label in metrics.OUTCOMES


def test_single_process_worker_serves_its_own_metrics(sqs_server: Any, sqs_queue: Any) -> None:
    import worker_apps

    port = free_port()
    worker = worker_apps.watched.replace(
        isolate=False, poll_wait_s=1, burst_tasks=3, metrics_port=port, sqs_timeout=6
    )
    worker.alarm_timeout = 1
    tm = sqs_server.task_manager(sqs_queue)
    tm.submit("ok", key="single")
    tm.submit("fail", key="single-fail")
    tm.submit("stuck", key="single-stuck", seconds=10)
    worker.connect(
        sqs_queue.url, sqs=sqs_server.session.resource("sqs", endpoint_url=sqs_server.endpoint_url)
    )
    seen: List[Samples] = []

    def scrape_while_running() -> None:
        # Called from the task: the endpoint is up while the worker runs.
        found = scrape(port)
        if found is not None:
            seen.append(found)

    worker.register("probe", scrape_while_running)
    tm.submit("probe")
    worker.burst_tasks = 4
    try:
        assert worker.run_single() == 0
    finally:
        metrics.stop_serving()
    assert seen, "the endpoint did not answer while the worker ran"
    assert scrape(port) is None  # stopped with the worker
    assert not metrics.enabled()
    counted = tasks_total(seen[-1])
    # The probe sees the tasks handled before it (SQS order is not guaranteed).
    assert set(counted) <= {("ok", "done"), ("fail", "failed"), ("stuck", "timed_out")}
    if ("stuck", "timed_out") in counted:
        overshoot = value(seen[-1], "sqstaskmaster_hard_timeout_overshoot_seconds_count")
        assert overshoot == 1
    assert value(seen[-1], "sqstaskmaster_tasks_in_progress", task="probe") == 1


# -- end to end -----------------------------------------------------------------


@pytest.fixture
def watched_worker(sqs_server: Any, sqs_queue: Any, tmp_path: Path):
    started: List[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        worker = WorkerProcess(
            sqs_server,
            "worker_apps:watched",
            sqs_queue.url,
            *args,
            directory_variable="SQSTM_TEST_DIR",
            directory=tmp_path,
            log_path=tmp_path / "worker.log",
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


def test_two_processes_one_endpoint_counts_every_outcome(
    sqs_server: Any, sqs_queue: Any, tmp_path: Path, watched_worker: Any
) -> None:
    # Given a 2-process worker with metrics and JSON logs; failed messages
    # come back only after an hour, so each is counted once.
    port = free_port()
    worker = watched_worker(
        "--processes", "2", "--metrics-port", str(port), "--log-format", "json",
        "--poll-wait", "1", "--sqs-timeout", "3", "--alarm-timeout", "1",
        "--shutdown-grace", "0.5", "--retry-first", "3600", "--retry-max", "3600",
    )  # fmt: skip
    wait_for(lambda: scrape(port) is not None, 60, "metrics endpoint up")

    # When tasks of every outcome run
    tm = sqs_server.task_manager(sqs_queue)
    for key in ("a", "b", "c"):
        tm.submit("ok", key=key)
    tm.submit("sleep", key="beats", seconds=2.5)
    tm.submit("fail", key="f1")
    tm.submit("fail", key="f2")
    tm.submit("stuck", key="stuck", seconds=30)
    tm.submit("too_long", key="long")
    tm.submit("nope")
    sqs_queue.queue.send_message(MessageBody="this is not json")
    expected = {
        ("ok", "done"): 3,
        ("sleep", "done"): 1,
        ("fail", "failed"): 2,
        ("stuck", "timed_out"): 1,
        ("too_long", "refused"): 1,
        ("nope", "unknown"): 1,
        ("", "invalid"): 1,
    }

    def counted(want: Dict[Tuple[str, str], int]) -> Optional[Samples]:
        # Counted, and every task's end recorded in full (a scrape may fall between
        # the count and the duration or the in-progress gauge of one task's end).
        samples = scrape(port)
        if samples is None or tasks_total(samples) != want or in_progress(samples) != 0:
            return None
        return samples

    last: List[Optional[Samples]] = [None]

    def counted_or_kept(want: Dict[Tuple[str, str], int]) -> Optional[Samples]:
        last[0] = scrape(port)
        return counted(want)

    try:
        samples = wait_for(lambda: counted_or_kept(expected), 90, f"counts {expected}")
    except AssertionError as error:
        seen = tasks_total(last[0]) if last[0] is not None else None
        raise AssertionError(f"{error}; last scrape: {seen}; log: {worker.log[-6000:]}")
    # Then the scrape matches what happened
    for (task, outcome), count in expected.items():
        if outcome in ("done", "failed", "timed_out"):
            histogram = "sqstaskmaster_task_duration_seconds_count"
            assert value(samples, histogram, task=task, outcome=outcome) == count
    assert value(samples, "sqstaskmaster_hard_timeout_overshoot_seconds_count") == 1
    assert value(samples, "sqstaskmaster_hard_timeout_overshoot_seconds_sum") < 10
    assert value(samples, "sqstaskmaster_heartbeats_total") >= 1
    assert value(samples, "sqstaskmaster_heartbeat_failures_total") == 0
    assert value(samples, "sqstaskmaster_poll_failures_total") == 0
    assert value(samples, "sqstaskmaster_worker_restarts_total") == 0
    assert in_progress(samples) == 0

    # When one worker process gets SIGTERM mid-task: handed back, then done by the other
    tm.submit("sleep_first", key="term", seconds=60)
    pid = wait_for(lambda: task_pid(tmp_path, "term"), 30, "task term started")
    wait_for(lambda: in_progress(scrape(port) or {}) == 1, 30, "in progress 1")
    os.kill(pid, signal.SIGTERM)
    expected[("sleep_first", "handed_back")] = 1
    expected[("sleep_first", "done")] = 1
    wait_for(lambda: counted(expected), 60, f"counts {expected}")
    # A worker process that stops while its supervisor does not is restarted.
    wait_for(lambda: restarts(port) == 1, 60, "the SIGTERM's restart counted")

    # When the other is killed (-9) mid-task: it is restarted; its figures stay
    tm.submit("sleep_first", key="kill", seconds=60)
    pid = wait_for(lambda: task_pid(tmp_path, "kill"), 30, "task kill started")
    wait_for(lambda: in_progress(scrape(port) or {}) == 1, 30, "in progress 1")
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: restarts(port) == 2, 60, "the kill's restart counted")
    samples = wait_for(lambda: counted(expected), 10, f"counts {expected} after the kill")
    # The dead process's gauge is dropped.
    wait_for(lambda: in_progress(scrape(port) or {}) == 0, 30, "in progress 0 after the kill")
    # The killed task's message comes back after its visibility (3 s) and runs
    expected[("sleep_first", "done")] = 2
    wait_for(lambda: counted(expected), 60, f"counts {expected} after the rerun")

    assert worker.stop(30) == 0
    check_json_log(worker.log)


@pytest.mark.parametrize(
    "mode",
    [
        ("--processes", "2", "--isolate"),
        ("--processes", "2", "--isolate", "--max-tasks-per-child", "5"),
        ("--processes", "1", "--signal-mode"),
    ],
    ids=["isolated", "isolated-reused-child", "signal-mode"],
)
def test_a_resumable_task_counts_each_continuation_and_each_checkpoint_once(
    sqs_server: Any, sqs_queue: Any, tmp_path: Path, watched_worker: Any, mode: Tuple[str, ...]
) -> None:
    # Given a worker that asks a resumable task to stop after 1 s of a receive
    # (isolated: the worker counts its child's checkpoints after the child ends;
    # a supervisor serves the metrics, so no worker process forks with a thread)
    port = free_port()
    worker = watched_worker(
        *mode, "--metrics-port", str(port), "--poll-wait", "1", "--sqs-timeout", "6",
        "--continue-after", "1", "--shutdown-grace", "2",
    )  # fmt: skip
    wait_for(lambda: scrape(port) is not None, 60, "metrics endpoint up")

    # When a task of 10 steps of 0.3 s, a checkpoint after each, runs to its end
    sqs_server.task_manager(sqs_queue).submit("steps", key="resume", total=10, step_s=0.3)

    def finished() -> Optional[Samples]:
        samples = scrape(port)
        if samples is None or ("steps", "done") not in tasks_total(samples):
            return None
        return samples if in_progress(samples) == 0 else None

    try:
        samples = wait_for(finished, 60, "steps done")
    except AssertionError as error:
        raise AssertionError(f"{error}; log: {worker.log[-6000:]}")

    # Then every message but the last counts as continued, each checkpoint once
    runs = [json.loads(path.read_text()) for path in tmp_path.glob("resumed.resume.*")]
    continuations = sorted(run["continuation"] for run in runs)
    assert continuations == list(range(len(runs))) and len(runs) >= 2, runs
    assert tasks_total(samples) == {
        ("steps", "continued"): len(runs) - 1,
        ("steps", "done"): 1,
    }, worker.log[-6000:]
    assert value(samples, "sqstaskmaster_checkpoints_total", task="steps") == 10
    histogram = "sqstaskmaster_task_duration_seconds_count"
    assert value(samples, histogram, task="steps", outcome="continued") == len(runs) - 1
    assert worker.stop(30) == 0


def restarts(port: int) -> Optional[float]:
    return (scrape(port) or {}).get(("sqstaskmaster_worker_restarts_total", ()))


def check_json_log(log: str) -> None:
    """Every line is a JSON object with the base fields; each outcome has a full line."""
    outcomes: Dict[str, Dict[str, Any]] = {}
    for number, text in enumerate(log.splitlines(), 1):
        try:
            line = json.loads(text)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {text!r}")
        assert {"time", "level", "logger", "message"} <= set(line), line
        if "outcome" in line and "message_id" in line:
            outcomes.setdefault(line["outcome"], line)
        if "exception" in line:
            # One string field; an isolated task's own traceback is in the line
            # that reported it, so its "Failed for message" line has none.
            assert isinstance(line["exception"], str) and line["exception"].strip(), line
    assert set(outcomes) >= {
        "done", "failed", "timed_out", "refused", "unknown", "invalid", "handed_back"
    }, outcomes  # fmt: skip
    for outcome, line in outcomes.items():
        assert line["receive_count"] >= 1, line
        if outcome != "invalid":  # an undecodable message has no task name
            assert line["task"], line
        if outcome in ("done", "failed", "timed_out", "handed_back"):
            assert isinstance(line["duration_s"], float), line
