"""The reused task child's own side: rebuild each task's handler from its facts, run, report.

Runs in the child that the worker's :class:`~sqstaskmaster.run.reuse_parent.ChildPool`
forks: :func:`serve_tasks` reads each task's
:class:`~sqstaskmaster.run.pipes.TaskFacts` from the request pipe, builds the
handler with the worker's builder (inherited by fork) around a
:class:`StandInMessage` (never an SQS client), runs the handler's body and
writes its report: one frame, a keep/retire byte, then
:mod:`sqstaskmaster.run.child_error`'s JSON report. Before keeping on, it puts
back the signal state it started with and checks that the task left nothing
running.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

from ..ops.logformat import add_to_context, task_context
from ..sqs import wire
from .child_error import REJECTED_MARK, error_report, result_report
from .child_process import EXIT_OK, flush_std_streams, lookup_prctl
from .pipes import KEEP, RETIRE, TaskFacts, read_frame, write_frame

logger = logging.getLogger(__name__)


#: Builds a task's handler as the worker would (its ``throws`` joined by the
#: task's own): ``build(task, message, kwargs, sqs_timeout, heartbeat_s, hard_timeout)``.
HandlerBuilder = Callable[[str, Any, Dict[str, Any], int, int, int], Any]


class StandInMessage:
    """The message as a reused child's handler sees it: its facts, and no SQS client."""

    receipt_handle = None

    def __init__(self, facts: TaskFacts) -> None:
        self.body = facts.body
        self.message_id = facts.message_id
        self.attributes = facts.attributes
        self.message_attributes = facts.message_attributes

    def change_visibility(self, **kwargs: Any) -> None:
        raise RuntimeError(
            f"message {self.message_id}: change_visibility({kwargs}) called inside a reused "
            "task child; the worker alone changes visibility (it heartbeats for the task)"
        )

    def delete(self) -> None:
        raise RuntimeError(
            f"message {self.message_id}: delete() called inside a reused task child; the "
            "worker deletes the message when the task ends cleanly"
        )

    def __repr__(self) -> str:
        return f"StandInMessage(message_id={self.message_id!r}, body={self.body!r})"


_PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper(prctl: Any) -> bool:
    """Linux: a process its task leaves orphaned becomes this child's own child.

    Then every live process the task left (in the child's process group or
    not) is, or descends from, a child of this one, and the children list
    alone tells whether anything is left. False where that cannot be set.
    """
    if prctl is None:
        return False
    return int(prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0


def _child_processes() -> Optional[List[int]]:
    """This process's children (Linux's /proc), None where /proc cannot tell."""
    pid = os.getpid()
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            return [int(child) for child in listing.read().split()]
    except OSError:
        return None


def _group_members() -> Optional[List[int]]:
    """The other live processes of this child's process group (Linux's /proc).

    None where /proc cannot tell (then the child is not reused).
    """
    me, group = os.getpid(), os.getpgrp()
    try:
        entries = os.listdir("/proc")
        os.stat(f"/proc/{me}/stat")
    except OSError:
        return None
    members = []
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            fd = os.open(f"/proc/{entry}/stat", os.O_RDONLY)
        except OSError:
            continue  # it has just ended
        try:
            stat = os.read(fd, 1024)
        except OSError:
            continue
        finally:
            os.close(fd)
        # After the command name: state, parent, process group.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == group and fields[0] not in (b"Z", b"X"):
            members.append(int(entry))
    return members


def _dispositions() -> Dict[int, Any]:
    """Every signal's disposition as this child starts with it (SIG_DFL or SIG_IGN).

    A handler some C code installed before the fork (None here) cannot be put
    back from Python; such a signal is left as it is.
    """
    found: Dict[int, Any] = {}
    for signum in signal.valid_signals():
        try:
            handler = signal.getsignal(signum)
        except (OSError, ValueError):
            continue
        if handler in (signal.SIG_DFL, signal.SIG_IGN):
            found[signum] = handler
    return found


def _restore_signals(dispositions: Dict[int, Any]) -> None:
    """The signal state this child started with, whatever a previous task changed.

    Every interval timer off, every disposition back (a task's SIG_IGN and a
    C extension's handler included: each is set again, not only the ones
    Python knows of), what a task left pending dropped, no signal blocked.
    """
    for timer in (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF):
        signal.setitimer(timer, 0)
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass
    for signum in signal.sigpending():  # ignoring a signal discards it
        try:
            signal.signal(signum, signal.SIG_IGN)
        except (OSError, ValueError):
            pass
    for signum, handler in dispositions.items():
        try:
            signal.signal(signum, handler)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def _leftovers(subreaper: bool) -> List[str]:
    """What a task left running that would go on into the next task (none: reuse)."""
    found = []
    if threading.active_count() > 1:
        found.append(f"{threading.active_count() - 1} thread(s)")
    children = _child_processes()
    if children:
        found.append(f"child process(es) {children}")
    if subreaper and children is not None:
        return found  # orphans came here: no process of the group can hide elsewhere
    members = _group_members()  # the orphans of a shell's `sleep 300 &`, say
    if members is None:
        found.append("process group members /proc cannot list")
    elif members:
        found.append(f"process(es) {members} in process group {os.getpgrp()}")
    return found


def run_facts(build: HandlerBuilder, facts: TaskFacts) -> Any:
    """Rebuild task ``facts.task``'s handler with ``build`` and run its body."""
    handler = build(
        facts.task,
        StandInMessage(facts),
        facts.kwargs,
        facts.sqs_timeout,
        facts.heartbeat_s,
        facts.hard_timeout,
    )
    throws: Tuple[Type[BaseException], ...] = tuple(handler.throws)
    try:
        # Not entered: run() runs its body here.
        return handler.run()
    except throws as error:
        error.__dict__[REJECTED_MARK] = True
        raise


def serve_tasks(
    build: HandlerBuilder, requests: Optional[int], reports: int
) -> int:  # pragma: no cover - runs in the child
    """The reused child's loop: one task per request until retired; its exit code."""
    assert requests is not None
    subreaper = _become_subreaper(lookup_prctl())
    dispositions = _dispositions()
    while True:
        body = read_frame(requests)
        if body is None:  # the worker retired this child
            return EXIT_OK
        keep = True
        try:
            facts = TaskFacts.decode(body)
            _restore_signals(dispositions)  # nothing a previous task set carries over
            with task_context(message_id=facts.message_id, receive_count=facts.receive_count):
                add_to_context(task=wire.task_label(facts.task))
                result = run_facts(build, facts)
        except Exception as error:
            report = error_report(error)
        except BaseException as error:  # sys.exit, KeyboardInterrupt: not a clean end
            report, keep = error_report(error), False
        else:
            report = result_report(result, True)
        if keep:
            left = _leftovers(subreaper)
            if left:
                keep = False
                logger.warning(
                    "%s message %s: the task left %s running; reused child process %s "
                    "is retired and its process group killed",
                    wire.task_label(facts.task),
                    facts.message_id,
                    ", ".join(left),
                    os.getpid(),
                )
        flush_std_streams()
        write_frame(reports, (KEEP if keep else RETIRE) + report)
        if not keep:
            return EXIT_OK
