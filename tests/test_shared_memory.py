"""Many worker processes, one copy of the app (issue 23).

The supervisor imports the app once and freezes its objects out of the
garbage collector before it forks (:mod:`sqstaskmaster.worker.sharing`), so a
collection in a worker process does not copy them. The task children's own
freeze is tested in test_task_process.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any, List

import pytest
from worker_process import WorkerProcess, wait_for

from sqstaskmaster.worker.sharing import freeze_for_fork, thaw

# What 1.5 million one-item lists take at the least (list, item array, int).
STRUCTURE_BYTES = 1_500_000 * 80


@pytest.fixture
def workers() -> Any:
    started: List[WorkerProcess] = []
    yield started
    for worker in started:
        worker.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_collection_in_a_supervised_worker_process_does_not_copy_the_app(
    sqs_server: Any, sqs_queue: Any, tmp_path: Path, workers: List[WorkerProcess]
) -> None:
    # Given two signal-mode worker processes (so the task runs in the worker
    # process itself) of an app that built about 130 MB of tracked objects
    path = tmp_path / "memory"
    sqs_server.task_manager(sqs_queue).submit("collect_and_measure", path=str(path))
    supervisor = WorkerProcess(
        sqs_server,
        "shared_memory_app:app",
        sqs_queue.url,
        *("--processes", "2", "--signal-mode", "--poll-wait", "1"),
        directory_variable="SQSTM_TEST_DIR",
        directory=tmp_path,
        log_path=tmp_path / "worker.log",
    )
    workers.append(supervisor)
    # When a worker process runs a full garbage collection
    wait_for(lambda: path.exists() and path.read_text().endswith("\n"), 60, "the task's report")
    pid, parent, private_kb, rss_kb = map(int, path.read_text().split())
    # Then it ran in a process forked by the supervisor, which holds the app
    # resident, and that process copied well under a quarter of it
    assert parent == supervisor.pid and pid != supervisor.pid
    assert rss_kb * 1024 > STRUCTURE_BYTES
    assert private_kb * 1024 < STRUCTURE_BYTES / 4, supervisor.log[-2000:]
    # and the app was imported once, by the supervisor, before it forked
    assert [p.name for p in tmp_path.glob("imported.*")] == [f"imported.{supervisor.pid}"]
    assert supervisor.stop() == 0


def test_the_freeze_is_undone_only_by_whoever_froze() -> None:
    assert gc.get_freeze_count() == 0
    froze = freeze_for_fork()
    assert froze and gc.get_freeze_count() > 0
    thaw(froze)
    assert gc.get_freeze_count() == 0
    gc.freeze()  # as an app that freezes its own objects would
    try:
        again = freeze_for_fork()
        assert not again
        thaw(again)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
