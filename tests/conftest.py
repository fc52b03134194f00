"""Shared fixtures: the Provisioner tests' (env, ecs) and the forking tests' thread count.

The suite never reaches the EC2 metadata service (169.254.169.254): it is off
for this process and every worker it starts (``--spot-notice auto`` is then
off without a probe); a test of Spot notices points a worker at a
FakeMetadataService instead.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import boto3
import pytest
from worker_process import WorkerProcess

from sqstaskmaster.run import reaper as task_reaper

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


@pytest.fixture
def env(sqs_environment: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """boto3's defaults pointed at the test server, with no default session cached."""
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    return sqs_environment


@pytest.fixture
def ecs(ecs_client: Any) -> Any:
    """An ECS client on the test server (skips where the server has no ECS)."""
    return ecs_client


# Threads of this process each time it forked while a test counts them.
_threads_at_fork: List[int] = []
_counting: List[bool] = []


_threads_at_reaper_fork: List[int] = []


def _count_threads() -> None:
    if _counting:
        # pytest-timeout's thread (timeout_method = "thread") belongs to the test run.
        threads = [t for t in threading.enumerate() if not t.name.startswith("pytest_timeout")]
        # A worker process forks its task reaper once, before its first task child.
        counted = _threads_at_reaper_fork if task_reaper.forking_reaper() else _threads_at_fork
        counted.append(len(threads))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_count_threads)


@pytest.fixture
def count_threads_at_fork() -> Iterator[List[int]]:
    """The number of threads at each fork this process makes during the test."""
    _threads_at_fork.clear()
    _threads_at_reaper_fork.clear()
    _counting.append(True)
    yield _threads_at_fork
    _counting.clear()
    assert set(_threads_at_reaper_fork) <= {1}, "the task reaper forked beside a thread"


@pytest.fixture
def trace_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where tasks (``worker_apps``) leave their traces, in this process and in workers."""
    monkeypatch.setenv("SQSTM_TEST_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def start_worker(sqs_server: Any, trace_dir: Path) -> Iterator[Any]:
    """Starts ``python -m sqstaskmaster worker APP`` against the test server; killed at the end.

    ``start(queue_url, *args, app=..., name=..., env=...)``: the log is ``trace_dir/NAME.log``.
    """
    started: List[WorkerProcess] = []

    def start(
        queue_url: str,
        *args: str,
        app: str = "worker_apps:app",
        name: str = "worker",
        env: Optional[Dict[str, str]] = None,
    ) -> WorkerProcess:
        worker = WorkerProcess(
            sqs_server,
            app,
            queue_url,
            "--poll-wait",
            "1",
            *args,
            directory_variable="SQSTM_TEST_DIR",
            directory=trace_dir,
            log_path=trace_dir / f"{name}.log",
            env=env,
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()
