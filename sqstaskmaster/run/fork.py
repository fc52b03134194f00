"""The parent's handle on one task in a child process, and the fresh fork per task.

:class:`ForkedChild` is what :func:`~sqstaskmaster.run.waiting.wait_for_child`
drives: wait for the task's end, stop it (SIGTERM to the child's process
group, a grace, SIGKILL), reap, read its outcome. It holds a
:class:`~sqstaskmaster.run.child_process.ChildProcess`, either forked for this
task alone by :func:`fork_task`, or a reused child lent by the worker's
:class:`~sqstaskmaster.run.reuse_parent.ChildPool` (then the task ends with its
report, and a clean end gives the process back instead of killing it).

A fresh child runs ``target()`` and reports once, as one frame
(:mod:`sqstaskmaster.run.pipes`) holding one JSON document::

    {"ok": true, "result": <the task's return value>}
    {"ok": true, "result": null, "dropped": "<why the return value could not be sent>"}
    {"ok": false, "type": "<exception type>", "module": "...", "qualname": "...",
     "message": "...", "traceback": "..."}

This module knows nothing about SQS; :mod:`sqstaskmaster.run.waiting` keeps the
heartbeat and the hard deadline on top of it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from typing import Any, Callable, Optional

from ..errors import ChildDiedError, TaskControl
from .child_error import child_task_error, error_report, result_report
from .child_process import (
    EXIT_OK,
    EXIT_TASK_RAISED,
    ChildProcess,
    fork_child,
)
from .child_process import fork_available as fork_available
from .pipes import KEEP, RETIRE, write_frame

logger = logging.getLogger(__name__)

#: Called with the process and the label when a reused child's task ended cleanly.
KeepChild = Callable[[ChildProcess, str], None]


def fork_task(
    target: Callable[[], Any], *, label: str = "task", drop_unsendable_result: bool = False
) -> ForkedChild:
    """Fork a child that calls ``target()`` and reports its result or exception.

    With ``drop_unsendable_result``, a return value that cannot be sent as
    JSON (or is over MAX_RESULT_BYTES) is dropped with a warning and the
    outcome is None; without it, that is a ChildTaskError.
    """

    def run_once(_requests: Optional[int], reports: int) -> int:  # pragma: no cover - child
        try:
            result = target()
        except BaseException as error:
            report, code = error_report(error), EXIT_TASK_RAISED
        else:
            report, code = result_report(result, drop_unsendable_result), EXIT_OK
        write_frame(reports, RETIRE + report)
        os.close(reports)
        return code

    process = fork_child(run_once)
    logger.info(
        "%s: started in child process %s (process group %s)", label, process.pid, process.pid
    )
    return ForkedChild(process, label)


class ForkedChild:
    """One task in child ``process``, as its parent supervises it.

    Without ``keep`` the child is this task's alone: the task has ended when
    the process has. With ``keep`` (a reused child) the task has ended when
    its report arrived (or the process died), and :meth:`reap` calls
    ``keep(process, label)`` instead of killing the process when the task
    ended cleanly (reported, asked to stay, not stopped). The parent must end
    with :meth:`reap` (directly, or through :meth:`terminate`), then read
    :meth:`outcome`.
    """

    def __init__(
        self, process: ChildProcess, label: str = "task", keep: Optional[KeepChild] = None
    ) -> None:
        self.process = process
        self.label = label
        self.pid = process.pid
        self.started_at = time.monotonic()
        self._keep = keep
        self._ended = False
        self._stopped = False
        self._reaped = False
        self._report: Optional[bytes] = None

    # -- state ----------------------------------------------------------------

    @property
    def reaped(self) -> bool:
        """True once the task's child has been reaped (or given back for the next task)."""
        return self._reaped

    def exited(self) -> bool:
        """Whether the task has ended (the child is not reaped by this call)."""
        if self._ended:
            return True
        process = self.process
        if self._keep is not None:
            process.read_reports()
            if process.reports.frame is not None or process.reports.overflow:
                self._ended = True
                return True
        if process.exited():
            process.read_reports()  # what it wrote before it ended
            self._ended = True
        return self._ended

    def alive(self) -> bool:
        """Whether the task is still running.

        Reads no pipe (a handler's ``running()`` asks from a helper thread,
        while the wait loop reads): a report already read ends a reused child's task.
        """
        if self._ended:
            return False
        reports = self.process.reports
        if self._keep is not None and (reports.frame is not None or reports.overflow):
            return False
        return not self.process.exited()

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` seconds for the task to end; returns whether it has."""
        return self.process.wait(timeout_s, self.exited)

    # -- stopping -------------------------------------------------------------

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the child's process group (the child and what it started)."""
        if not self._reaped:
            self.process.signal_group(signum)

    def terminate(self, grace_s: float) -> None:
        """SIGTERM to the process group, up to ``grace_s`` seconds for the child, then reap.

        :meth:`reap` SIGKILLs whatever is left of the group.
        """
        if self._reaped:
            return
        if not self.exited():
            logger.warning(
                "%s: sending SIGTERM to process group %s (grace %.1f s)",
                self.label,
                self.pid,
                grace_s,
            )
            self.signal_group(signal.SIGTERM)
            if not self.process.wait(grace_s):  # the process itself, not only the task
                logger.warning(
                    "%s: child process %s still running %.1f s after SIGTERM; SIGKILL",
                    self.label,
                    self.pid,
                    grace_s,
                )
            self._stopped = True  # a report that raced with the stop is no clean end
        self.reap()

    def reap(self) -> None:
        """Give a cleanly ended reused child back; else SIGKILL its group and reap it."""
        if self._reaped:
            return
        process = self.process
        process.read_reports()
        frame = process.reports.frame
        clean = frame is not None and frame[:1] == KEEP and not self._stopped
        kept = self._keep is not None and clean and not process.exited()
        if not kept:
            process.kill_and_reap(self.label)
        frame = process.reports.take()
        self._report = None if frame is None else frame[1:]
        self._reaped = self._ended = True
        if self._keep is not None and kept:
            self._keep(process, self.label)
            return
        logger.debug(
            "%s: child process %s reaped after %.3f s",
            self.label,
            self.pid,
            time.monotonic() - self.started_at,
        )

    # -- the result -----------------------------------------------------------

    def outcome(self) -> Any:
        """The task's return value; or raise ChildTaskError / ChildDiedError. After reap().

        A task's exception is raised as its own class (also a ChildTaskError)
        where :mod:`sqstaskmaster.run.child_error` can rebuild it.
        """
        if not self._reaped:
            raise RuntimeError(f"{self.label}: outcome() called before the child was reaped")
        report = self._decode_report()
        if report is None:
            raise self._death_error()
        if report.get("ok") is True:
            if report.get("dropped"):
                logger.warning(
                    "%s: the task's return value is dropped (the task still counts as done): %s",
                    self.label,
                    report["dropped"],
                )
            return report.get("result")
        control = TaskControl.from_report(report.get("control"))
        if control is not None:
            logger.info("%s: the task in child process %s: %s", self.label, self.pid, control)
            raise control
        error = child_task_error(
            report.get("module"),
            report.get("qualname"),
            str(report.get("message")),
            str(report.get("traceback")),
            str(report.get("type")),
            self.pid,
        )
        error.rejected = report.get("rejected") is True
        logger.error(
            "%s: task raised %s in child process %s:\n%s",
            self.label,
            error.type_name,
            self.pid,
            error.traceback,
        )
        raise error

    def _decode_report(self) -> Optional[dict]:
        if self.process.reports.overflow:
            logger.error("%s: child process %s sent an oversized report", self.label, self.pid)
            return None
        if not self._report:
            return None
        try:
            report = json.loads(self._report.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            logger.exception("%s: child process %s sent a broken report", self.label, self.pid)
            return None
        return report if isinstance(report, dict) else None

    def _death_error(self) -> ChildDiedError:
        status = self.process.wait_status
        status = 0 if status is None else status
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            try:
                name = signal.Signals(number).name
            except ValueError:
                name = f"signal {number}"
            error = ChildDiedError(self.pid, signal_name=name, signal_number=number)
        else:
            error = ChildDiedError(self.pid, exit_code=os.waitstatus_to_exitcode(status))
        logger.error("%s: %s", self.label, error)
        return error
