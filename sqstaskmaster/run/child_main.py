"""The reused task child's own side: rebuild a task's handler from its facts, run, report.

Runs in the child :mod:`sqstaskmaster.run.pool` forks: it reads each
task's :class:`TaskFacts` from a pipe, builds the handler from the registry it
inherited by fork around a :class:`StandInMessage` (never an SQS client),
runs the handler's body and writes its report (one frame: a keep/retire byte,
then :mod:`sqstaskmaster.run.child_error`'s JSON report).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import signal
import struct
import threading
import traceback
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Type

from ..ops.logformat import add_to_context, task_context
from ..run.child import (
    EXIT_OK,
    EXIT_REPORT_FAILED,
    _flush_std_streams,
    _write_all,
    enter_task_child,
)
from ..run.child_error import REJECTED_MARK, error_report, result_report
from ..sqs import wire
from ..worker.registry import build_handler

logger = logging.getLogger(__name__)

HEADER = struct.Struct(">I")
# Report frames start with one of these: the child stays for the next task, or leaves.
KEEP = b"k"
RETIRE = b"r"


@dataclass
class TaskFacts:
    """What a reused child needs to rebuild a task's handler: no live SQS object."""

    task: str
    kwargs: Dict[str, Any]
    body: str
    message_id: Optional[str]
    attributes: Dict[str, Any]
    message_attributes: Dict[str, Any]
    receive_count: int
    sqs_timeout: int
    heartbeat_s: int
    hard_timeout: int

    def encode(self) -> bytes:
        """These facts as JSON (a message attribute's BinaryValue as base64)."""
        return json.dumps(dataclasses.asdict(self), default=_bytes_to_json).encode()

    @classmethod
    def decode(cls, data: bytes) -> TaskFacts:
        """The facts :meth:`encode` wrote."""
        return cls(**json.loads(data, object_hook=_json_to_bytes))


_BYTES_KEY = "__sqstaskmaster_bytes__"


def _bytes_to_json(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {_BYTES_KEY: base64.b64encode(value).decode("ascii")}
    raise TypeError(f"{type(value).__name__} cannot cross to a reused task child")


def _json_to_bytes(value: Dict[str, Any]) -> Any:
    if len(value) == 1 and _BYTES_KEY in value:
        return base64.b64decode(value[_BYTES_KEY])
    return value


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


def _read_exactly(fd: int, size: int) -> Optional[bytes]:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


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


def run_facts(worker: Any, facts: TaskFacts) -> Any:
    """Rebuild task ``facts.task``'s handler from the inherited registry and run its body."""
    spec = worker.registry[facts.task]
    cls = worker._handler_type(facts.task)
    handler = build_handler(
        spec,
        cls,
        StandInMessage(facts),
        facts.sqs_timeout,
        facts.heartbeat_s,
        facts.hard_timeout,
        facts.kwargs,
    )
    throws: Tuple[Type[BaseException], ...] = tuple(spec.throws) + tuple(handler.throws)
    try:
        # Not entered: run() runs its body here.
        return handler.run()
    except throws as error:
        error.__dict__[REJECTED_MARK] = True
        raise


def child_main(
    worker: Any,
    requests: int,
    reports: int,
    parent_pid: int,
    prctl: Any,
) -> None:  # pragma: no cover - runs in the child, which ends with os._exit
    code = EXIT_REPORT_FAILED
    try:
        enter_task_child(parent_pid, prctl)
        subreaper = _become_subreaper(prctl)
        dispositions = _dispositions()
        while True:
            header = _read_exactly(requests, HEADER.size)
            if header is None:  # the worker retired this child
                code = EXIT_OK
                break
            body = _read_exactly(requests, HEADER.unpack(header)[0])
            if body is None:
                break
            keep = True
            try:
                facts = TaskFacts.decode(body)
                _restore_signals(dispositions)  # nothing a previous task set carries over
                with task_context(message_id=facts.message_id, receive_count=facts.receive_count):
                    add_to_context(task=wire.task_label(facts.task))
                    result = run_facts(worker, facts)
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
            frame = (KEEP if keep else RETIRE) + report
            _flush_std_streams()
            _write_all(reports, HEADER.pack(len(frame)) + frame)
            if not keep:
                code = EXIT_OK
                break
    except BaseException:
        try:
            traceback.print_exc()
        except BaseException:
            pass
    finally:
        _flush_std_streams()
        os._exit(code)
