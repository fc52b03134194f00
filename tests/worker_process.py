"""``python -m sqstaskmaster worker <app>`` in a subprocess of its own session, for tests.

Both the worker tests (``worker_apps:app``) and the reliability suite
(``reliability.apps:app``) start workers through :class:`WorkerProcess`, with
tests/ on the ``PYTHONPATH`` and as the working directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

TESTS = Path(__file__).resolve().parent


def running(pid: int) -> bool:
    """Whether ``pid`` runs (not absent, not a zombie; Linux /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


class WorkerProcess:
    """One worker against the test server; its output goes to ``log_path``.

    ``app`` is ``module:attribute``; ``directory_variable`` names the environment
    variable the app reads its trace directory from, set to ``directory``.
    ``endpoint_url`` (e.g. a fault proxy) goes to the worker both as
    ``AWS_ENDPOINT_URL`` and ``--endpoint-url``; ``env`` is added last.
    """

    def __init__(
        self,
        server: Any,
        app: str,
        queue_url: str,
        *args: str,
        directory_variable: str,
        directory: Path,
        log_path: Path,
        endpoint_url: Optional[str] = None,
        env: Optional[Dict[str, str]] = None,
    ) -> None:
        environment = dict(os.environ, **server.environment)
        if endpoint_url:
            environment["AWS_ENDPOINT_URL"] = endpoint_url
        environment[directory_variable] = str(directory)
        environment["PYTHONPATH"] = os.pathsep.join([str(TESTS), environment.get("PYTHONPATH", "")])
        environment.update(env or {})
        self.log_path = log_path
        self._log = open(self.log_path, "a")
        command = [sys.executable, "-m", "sqstaskmaster", "worker", app, "--queue-url", queue_url]
        if endpoint_url:
            command += ["--endpoint-url", endpoint_url]
        self.process = subprocess.Popen(
            [*command, *args],
            cwd=str(TESTS),
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.process.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout_s: float) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker still running after {timeout_s} s:\n{self.log[-3000:]}")

    def stop(self, timeout_s: float = 15) -> int:
        """SIGTERM, then the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def close(self) -> None:
        """Kill the whole session if it still runs (a failed test), and close the log."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        self._log.close()


def wait_for(
    predicate: Callable[[], Any], timeout_s: float, what: str = "condition", step_s: float = 0.05
) -> Any:
    """The first true ``predicate()`` within ``timeout_s``, else AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step_s)
    raise AssertionError(f"{what}: not met within {timeout_s} s")


def traces(directory: Path, kind: str, key: str) -> List[Dict[str, Any]]:
    """The ``kind`` traces tasks left for ``key`` (``worker_apps._trace``), oldest first
    (by the time a step ``started``, if they say it)."""
    found = []
    for path in directory.glob(f"{kind}.{key}.*"):
        if not path.name.endswith(".tmp"):
            found.append(json.loads(path.read_text()))
    return sorted(found, key=lambda trace: trace.get("started", trace["time"]))
