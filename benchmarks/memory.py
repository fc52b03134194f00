"""Memory of worker processes with a large app, and start-up: sqstaskmaster against Celery.

The app (this module, imported by the workers) builds ``--objects`` records at
import (default 700,000: a tuple of an int, a string and a dict that holds a
list, about 300 MB of Python objects that the garbage collector tracks, as
parsed JSON or a dataframe of objects would be), and registers one task,
``hold``: it builds a few MB of its own objects, runs a full garbage
collection (what any task that allocates ends up doing), says it started,
and waits to be released.

One counting moto server (``peers.py``'s, 127.0.0.1, dummy credentials) serves
every run. Each run gets its own queue and measures the proportional set size
(PSS, from ``/proc/PID/smaps_rollup``) summed over the whole process tree:

- ``ours``: ``sqstaskmaster worker memory:TASKS --processes 4`` (supervisor,
  four worker processes and their task children) in three modes: ``isolated``
  (the default, a fork per task), ``reused`` (``--max-tasks-per-child 100``)
  and ``signal`` (``--signal-mode``); idle (once every worker process polls,
  plus a few seconds) and busy (while four ``hold`` tasks run at once);
- ``celery``: the same app on Celery's prefork pool, ``-c 4`` (main process
  and pool children), from the peers benchmark's own virtual environment
  (``--venv``, installed there when missing; see ``peers.py``).

``app_mb`` is the PSS a plain process gains by building the app. The ``ours``
figures are the highest of the three modes. Start-up: an app whose import
takes ``--import-s`` seconds (a sleep, nothing built), ``--processes`` 1 and 4
(default isolated mode), timed from the start of the command to the moment
the last worker process logs that it starts consuming (right before its
first poll); the two alternate, ``--repeats`` times (default 3), medians.

Targets (issue 23): ``ours_idle_total_pss_mb`` <= ``app_mb`` + 4 x 40 MB,
``ours_busy_total_pss_mb`` <= ``app_mb`` + 8 x 40 MB, each at most half of
Celery's, and ``startup_s_4`` <= 1.3 x ``startup_s_1``.

Usage: python benchmarks/memory.py [--objects N] [--import-s S] [--repeats R] [--venv DIR]
       [--skip-celery] [--keep]
The last line printed is one JSON object. Linux only (reads /proc). The
workers run in this folder, so they import the sqstaskmaster of the Python
that runs this script: to measure another version, run it with that
version's interpreter.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import peers

OBJECTS_VARIABLE = "MEMORY_APP_OBJECTS"
IMPORT_S_VARIABLE = "MEMORY_APP_IMPORT_S"
PROCESSES = 4
HOLD_MAX_S = 120.0
SETTLE_S = 3.0
MODES = {
    "isolated": ["--isolate"],
    "reused": ["--isolate", "--max-tasks-per-child", "100"],
    "signal": ["--signal-mode"],
}
THIS_FILE = str(Path(__file__).resolve())


# --- The app (imported by every worker, ours and Celery's). ---


def build(count: int) -> List[Tuple[int, str, Dict[str, Any]]]:
    """``count`` records of small Python objects (about 420 bytes each).

    The list in each dict keeps the dict and its tuple tracked by the garbage
    collector (a tuple or dict of atomic values alone would be untracked).
    """
    return [(i, f"item-{i:08d}", {"id": i, "tags": [i % 7, "x"]}) for i in range(count)]


DATA = build(int(os.environ.get(OBJECTS_VARIABLE) or 0))
time.sleep(float(os.environ.get(IMPORT_S_VARIABLE) or 0))


def hold(directory: str) -> None:
    """A task's own objects and a full collection, then wait for ``directory``/release."""
    folder = Path(directory)
    own = [(i, str(i)) for i in range(50_000)]
    gc.collect()
    (folder / f"started.{os.getpid()}").write_text(str(len(DATA)))
    deadline = time.monotonic() + HOLD_MAX_S
    while not (folder / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    (folder / f"done.{os.getpid()}").write_text(str(len(own)))


TASKS = {"hold": hold}


def run_celery(args: argparse.Namespace) -> None:
    """Celery's side (run with the peers' interpreter): fill the queue, or work it."""
    app = peers.celery_app(args.endpoint, args.queue_url, None)
    app.task(name="memory.hold")(hold)
    if args.role == "fill":
        for _ in range(PROCESSES):
            app.tasks["memory.hold"].delay(args.directory)
        return
    app.worker_main(
        [
            "worker",
            "--pool=prefork",
            f"--concurrency={PROCESSES}",
            "--loglevel=INFO",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
        ]
    )


# --- Measuring (run with the project's Python). ---


def own_pss_kb() -> int:
    return pss_kb(os.getpid()) or 0


def pss_kb(pid: int) -> Optional[int]:
    """The process's PSS in kB, or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def process_tree(root: int) -> List[int]:
    """``root`` and every process below it."""
    children: Dict[int, List[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def tree_pss_mb(root: int) -> Tuple[float, List[float]]:
    """The PSS of the whole tree under ``root`` (MB), and each process's."""
    each = [kb / 1024 for kb in map(pss_kb, process_tree(root)) if kb is not None]
    return round(sum(each), 1), [round(mb, 1) for mb in each]


def app_mb(objects: int) -> float:
    """What building the app adds to a plain process's PSS (MB)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import memory\n"
        "before = memory.own_pss_kb(); data = memory.build(int(sys.argv[2]))\n"
        "print((memory.own_pss_kb() - before) / 1024)\n"
    )
    folder = str(Path(THIS_FILE).parent)
    result = subprocess.run(
        [sys.executable, "-c", code, folder, str(objects)],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, **{OBJECTS_VARIABLE: "0"}),
    )
    return round(float(result.stdout.split()[-1]), 1)


class Run:
    """One worker command against a fresh queue, its log, and its stop."""

    keep = False  # --keep: leave the task markers (and logs) for a look

    def __init__(self, server: peers.CountingServer, workdir: Path, name: str) -> None:
        self.server = server
        self.name = f"memory-{name}-{uuid.uuid4().hex[:6]}"
        self.url = server.client.create_queue(QueueName=self.name)["QueueUrl"]
        self.directory = workdir / self.name
        self.directory.mkdir()
        self.log_path = workdir / f"{self.name}.log"
        self.process: Optional[subprocess.Popen[bytes]] = None

    def start(self, command: List[str], env: Dict[str, str]) -> float:
        self.server.get(f"{peers.RESET_PATH}?target=0")
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                # Not the caller's folder: from a checkout's root, ``python -m
                # sqstaskmaster`` would run the checkout's code, not the interpreter's.
                cwd=str(Path(THIS_FILE).parent),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return started

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, what: str, check: Any, timeout_s: float = 120.0) -> float:
        deadline = time.monotonic() + timeout_s
        while not check():
            if self.process is not None and self.process.poll() is not None:
                raise SystemExit(
                    f"{self.name}: the worker exited waiting for {what}:\n{self.log()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name}: no {what} in {timeout_s} s:\n{self.log()[-3000:]}")
            time.sleep(0.02)
        return time.monotonic()

    def polled(self) -> bool:
        return self.server.get(peers.STATS_PATH)["first_receive_at"] is not None

    def markers(self, kind: str) -> int:
        return len(list(self.directory.glob(f"{kind}.*")))

    def close(self) -> None:
        if self.process is not None:
            peers.stop(self.process, 0.0)
        self.server.client.delete_queue(QueueUrl=self.url)
        if not self.keep:
            shutil.rmtree(self.directory, ignore_errors=True)


def ours_command(run: Run, processes: int, mode: List[str]) -> List[str]:
    command = [sys.executable, "-m", "sqstaskmaster", "--log-level", "INFO", "worker"]
    command += ["memory:TASKS", "--queue-url", run.url, "--endpoint-url", run.server.endpoint]
    command += ["--region", peers.REGION, "--processes", str(processes), "--poll-wait", "1"]
    return command + mode


def consuming(run: Run, count: int) -> bool:
    return run.log().count(" consuming ") >= count


def fill_ours(run: Run) -> None:
    import boto3

    from sqstaskmaster.task_manager import TaskManager

    sqs = boto3.resource(
        "sqs",
        endpoint_url=run.server.endpoint,
        region_name=peers.REGION,
        aws_access_key_id=peers.KEY,
        aws_secret_access_key=peers.SECRET,
    )
    TaskManager(run.url, sqs=sqs).submit_batch([("hold", {"directory": str(run.directory)})] * 4)


def idle_and_busy(run: Run, ready: Any, fill: Any) -> Dict[str, Any]:
    """Once ``ready()``: the idle PSS; then ``fill()``, and the PSS while 4 tasks run."""
    assert run.process is not None
    run.wait_for("start", ready)
    run.wait_for("poll", run.polled)
    time.sleep(SETTLE_S)
    idle, idle_each = tree_pss_mb(run.process.pid)
    fill()
    run.wait_for("4 running tasks", lambda: run.markers("started") >= PROCESSES)
    time.sleep(SETTLE_S)
    busy, busy_each = tree_pss_mb(run.process.pid)
    (run.directory / "release").write_text("")
    run.wait_for("4 finished tasks", lambda: run.markers("done") >= PROCESSES)
    return {"idle": idle, "busy": busy, "idle_each": idle_each, "busy_each": busy_each}


def measure_ours(
    server: peers.CountingServer, workdir: Path, env: Dict[str, str], mode: str
) -> Dict[str, Any]:
    run = Run(server, workdir, mode)
    try:
        run.start(ours_command(run, PROCESSES, MODES[mode]), env)
        return idle_and_busy(run, lambda: consuming(run, PROCESSES), lambda: fill_ours(run))
    finally:
        run.close()


def measure_celery(
    server: peers.CountingServer, workdir: Path, env: Dict[str, str], python: str
) -> Dict[str, Any]:
    run = Run(server, workdir, "celery")
    common = ["--endpoint", server.endpoint, "--queue-url", run.url]
    common += ["--directory", str(run.directory)]

    def fill() -> None:
        command = [python, THIS_FILE, "_celery", "fill", *common]
        quiet = dict(env, **{OBJECTS_VARIABLE: "0"})
        subprocess.run(command, env=quiet, check=True, capture_output=True)

    try:
        run.start([python, THIS_FILE, "_celery", "work", *common], env)
        return idle_and_busy(run, lambda: " ready." in run.log(), fill)
    finally:
        run.close()


def startup_s(server: peers.CountingServer, workdir: Path, env: Dict[str, str], n: int) -> float:
    """Seconds from the command's start to the last worker process's first poll."""
    run = Run(server, workdir, f"startup-{n}")
    try:
        started = run.start(ours_command(run, n, []), env)
        return round(run.wait_for("consuming", lambda: consuming(run, n)) - started, 2)
    finally:
        run.close()


def conduct(args: argparse.Namespace) -> None:
    Run.keep = args.keep
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    python = None if args.skip_celery else peers.peer_python(Path(args.venv))
    workdir = Path(tempfile.mkdtemp(prefix="sqstaskmaster-memory-"))
    server = peers.CountingServer(workdir)
    summary: Dict[str, Any] = {"app_mb": app_mb(args.objects)}
    print(f"app: {summary['app_mb']} MB", flush=True)
    try:
        env = peers.peer_environment(server.endpoint)
        slow = dict(env, **{OBJECTS_VARIABLE: "0", IMPORT_S_VARIABLE: str(args.import_s)})
        times: Dict[int, List[float]] = {1: [], 4: []}
        for repeat in range(args.repeats):
            for n in (1, 4) if repeat % 2 == 0 else (4, 1):
                times[n].append(startup_s(server, workdir, slow, n))
                print(f"start-up, {n} processes: {times[n][-1]} s", flush=True)
        big = dict(env, **{OBJECTS_VARIABLE: str(args.objects)})
        ours = {}
        for mode in MODES:
            ours[mode] = measure_ours(server, workdir, big, mode)
            print(f"ours, {mode}: {json.dumps(ours[mode])}", flush=True)
        celery = None
        if python is not None:
            celery = measure_celery(server, workdir, big, python)
            print(f"celery prefork -c {PROCESSES}: {json.dumps(celery)}", flush=True)
    finally:
        server.close()
        if args.keep:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    summary["ours_idle_total_pss_mb"] = max(figures["idle"] for figures in ours.values())
    summary["ours_busy_total_pss_mb"] = max(figures["busy"] for figures in ours.values())
    for mode, figures in ours.items():
        summary[f"ours_{mode}_idle_pss_mb"] = figures["idle"]
        summary[f"ours_{mode}_busy_pss_mb"] = figures["busy"]
    summary["celery_idle_total_pss_mb"] = celery["idle"] if celery else None
    summary["celery_busy_total_pss_mb"] = celery["busy"] if celery else None
    summary["startup_s_1"] = statistics.median(times[1])
    summary["startup_s_4"] = statistics.median(times[4])
    summary["targets_met"] = targets_met(summary)
    summary.update(
        objects=args.objects,
        import_s=args.import_s,
        repeats=args.repeats,
        date=date.today().isoformat(),
        machine=f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        python=platform.python_version(),
        versions=peers.versions(sys.executable, peers.OWN_DISTRIBUTIONS),
        celery_versions=peers.versions(python, ("celery", "kombu", "billiard")) if python else None,
    )
    print(json.dumps(summary))


def targets_met(summary: Dict[str, Any]) -> Dict[str, Optional[bool]]:
    app = summary["app_mb"]
    idle, busy = summary["ours_idle_total_pss_mb"], summary["ours_busy_total_pss_mb"]
    peer_idle, peer_busy = summary["celery_idle_total_pss_mb"], summary["celery_busy_total_pss_mb"]
    return {
        "idle_within_app_plus_4x40": idle <= app + 4 * 40,
        "busy_within_app_plus_8x40": busy <= app + 8 * 40,
        "idle_at_most_half_celery": None if peer_idle is None else idle <= peer_idle / 2,
        "busy_at_most_half_celery": None if peer_busy is None else busy <= peer_busy / 2,
        "startup_4_within_1_3x_startup_1": summary["startup_s_4"] <= 1.3 * summary["startup_s_1"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=700_000, help="app records (700,000)")
    parser.add_argument("--import-s", type=float, default=5.0, help="start-up app import (5 s)")
    parser.add_argument("--repeats", type=int, default=3, help="start-up runs of each (3)")
    parser.add_argument(
        "--venv",
        default=str(Path(tempfile.gettempdir()) / "sqstaskmaster-peers-venv"),
        help="Celery's virtual environment (peers.py's; made if missing)",
    )
    parser.add_argument("--skip-celery", action="store_true", help="measure ours only")
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    roles = parser.add_subparsers(dest="command")
    celery = roles.add_parser("_celery")  # Celery's side, run with the peers' Python
    celery.add_argument("role", choices=("fill", "work"))
    celery.add_argument("--endpoint", required=True)
    celery.add_argument("--queue-url", required=True)
    celery.add_argument("--directory", required=True)
    args = parser.parse_args()
    if args.command == "_celery":
        run_celery(args)
    else:
        conduct(args)


if __name__ == "__main__":
    main()
