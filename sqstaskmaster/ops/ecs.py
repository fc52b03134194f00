"""ECS task scale-in protection: ECS does not stop a container while it runs a task.

ECS sets ``ECS_AGENT_URI`` in every container. The worker protects its ECS
task before a task starts and releases the protection once it is idle, with
``PUT $ECS_AGENT_URI/task-protection/v1/state`` and a JSON body of
``{"ProtectionEnabled": true, "ExpiresInMinutes": M}`` or
``{"ProtectionEnabled": false}``. M covers the task's hard timeout plus the
shutdown grace, rounded up to whole minutes (1 to 2,880).

One place owns the state of one ECS task: the worker itself in a single
process (:class:`InlineProtection`, calls made inline before and after a
task), or the supervisor with ``--processes N`` (:class:`SharedProtection`:
each worker process writes when it needs protection until, and the
supervisor's wait loop makes the calls). An agent that fails, refuses or
hangs costs at most :data:`~sqstaskmaster.ops.ecs_agent.AGENT_TIMEOUT_S` per
call, is logged and notified once per kind of failure, and never fails a task.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from multiprocessing.sharedctypes import RawArray
from typing import Any, Callable, Optional, Sequence, Set

from ..errors import Notify
from .ecs_agent import AgentClient, agent_uri_for, protection_minutes

logger = logging.getLogger(__name__)

# How often a worker process looks whether the supervisor has applied its request.
_ACK_POLL_S = 0.005
#: After a failed agent call, seconds before it is tried again (the worker sets its heartbeat).
RETRY_AFTER_S = 10.0


class ProtectionState:
    """Protected from the first busy moment until everything is idle; makes the agent calls.

    ``protected_until`` (``time.monotonic()``) is how far the last enable the
    agent applied reaches; None when released or never applied. A call is made
    only when the state must change, or when a task needs protection past
    ``protected_until``. A failed call is tried again, never in a loop: a
    failed enable ``retry_after_s`` later (the worker's heartbeat period:
    :meth:`run_due` from the worker's chores while its task runs, or the
    supervisor's next :meth:`update`), and at once for a task that started
    since; a failed release at the first idle moment ``retry_after_s`` later,
    and until the agent applies it (an idle container left protected would
    block scale-in for hours).
    """

    def __init__(self, client: AgentClient, retry_after_s: float = RETRY_AFTER_S) -> None:
        self.client = client
        self.retry_after_s = retry_after_s
        self.protected_until: Optional[float] = None
        self.tried = False  # an enable was tried since the last release the agent applied
        self.wanted_until: Optional[float] = None  # a failed enable's deadline, tried again
        self.retry_at: Optional[float] = None  # when a failed call may be tried again
        self._release_failed = False
        self._failed_for: Set[float] = set()  # the busy deadlines the last failed enable was for
        # A failed enable is tried again from the worker's chores thread while the
        # main thread may release: one call at a time, on one state.
        self._lock = threading.RLock()

    def cover(self, until: float) -> bool:
        """Make sure the task is protected until at least ``until`` (monotonic seconds).

        True when it is; False when the agent call failed (logged by the
        client; tried again ``retry_after_s`` later by :meth:`run_due`).
        """
        with self._lock:
            if self.protected_until is not None and self.protected_until >= until:
                self.wanted_until = None
                return True
            now = time.monotonic()
            minutes = protection_minutes(until - now)
            self.tried = True
            if not self.client.put(True, minutes):
                self.wanted_until = max(until, self.wanted_until or until)
                self.retry_at = now + self.retry_after_s
                logger.warning(
                    "ECS task scale-in protection: the enable failed; trying again in %.0f s",
                    self.retry_after_s,
                )
                return False
            self.protected_until = now + 60.0 * minutes
            self.wanted_until = self.retry_at = None
            self._release_failed = False
            return True

    def release(self) -> None:
        """Release the protection, if an enable was tried (a timed-out one may have applied).

        A failed release is tried again by the next call made ``retry_after_s`` later or more.
        """
        with self._lock:
            self._failed_for = set()
            self.wanted_until = None
            if not self.tried:
                return
            now = time.monotonic()
            if self._release_failed and self.retry_at is not None and now < self.retry_at:
                return
            self.protected_until = None  # unknown until the agent says: a later task enables anew
            if self.client.put(False):
                self.tried = self._release_failed = False
                self.retry_at = None
                return
            self._release_failed = True
            self.retry_at = now + self.retry_after_s
            logger.warning(
                "ECS task scale-in protection: the release failed; trying again when idle "
                "in %.0f s or more",
                self.retry_after_s,
            )

    def due_at(self) -> Optional[float]:
        """When a failed enable is to be tried again (``time.monotonic()``), or None."""
        return self.retry_at if self.wanted_until is not None else None

    def run_due(self) -> None:
        """Try a failed enable again, if one is due and its task still needs it."""
        with self._lock:
            now = time.monotonic()
            if self.wanted_until is None or self.retry_at is None or now < self.retry_at:
                return
            if self.wanted_until <= now:
                self.wanted_until = None
                return
            self.cover(self.wanted_until)

    def update(self, deadlines: Sequence[float]) -> None:
        """Cover the latest of the busy deadlines (above 0), or release when there is none.

        After a failed enable, the call is tried again at once for a deadline
        not seen then (a task that started since), else ``retry_after_s`` later.
        """
        with self._lock:
            busy = {deadline for deadline in deadlines if deadline > 0}
            if not busy:
                self.release()
            elif not busy <= self._failed_for:
                self._failed_for = set() if self.cover(max(busy)) else busy
            elif self.due_at() is not None:
                self.run_due()
                if self.wanted_until is None:
                    self._failed_for = set()


def make_state(
    agent_uri: Optional[str],
    notify: Optional[Notify],
    retry_after_s: float = RETRY_AFTER_S,
) -> Any:
    """A ProtectionState for ``agent_uri``, or None when there is no agent."""
    if agent_uri is None:
        return None
    logger.info("ECS task scale-in protection on, through the agent at %s", agent_uri)
    return ProtectionState(AgentClient(agent_uri, notify=notify), retry_after_s)


def inline_protection(
    setting: Any, notify: Optional[Notify], retry_after_s: float = RETRY_AFTER_S
) -> Any:
    """A single worker process's protection hooks for ``ecs_protection`` = ``setting``, or None."""
    state = make_state(agent_uri_for(setting), notify, retry_after_s)
    return InlineProtection(state) if state is not None else None


class InlineProtection:
    """A single worker process's hooks: calls made in line, each at most ``timeout_s``."""

    def __init__(self, state: ProtectionState) -> None:
        self.state = state

    def busy(self, needed_s: float, task: str, message_id: Optional[str]) -> None:
        """A task is about to start and may take ``needed_s`` seconds (hard timeout + grace)."""
        self.state.cover(time.monotonic() + needed_s)

    def idle(self) -> None:
        """No task runs, and the last poll found no work (or the worker stops)."""
        self.state.release()

    def due_at(self) -> Optional[float]:
        """When a failed enable is tried again (one of the worker's chores), or None."""
        return self.state.due_at()

    def run_due(self) -> None:
        """Try a failed enable again, if due (from the worker's chores, while a task runs)."""
        self.state.run_due()


class SharedProtection:
    """The supervisor's protection state, fed by its worker processes; made before forking.

    Slot ``i`` of ``deadlines`` is when worker process ``i`` needs protection
    until (``time.monotonic()``, the same clock in every process), or 0 when
    it is idle; ``applied`` echoes each slot once the supervisor has acted on
    it. Writers wake the supervisor through a pipe (:meth:`fileno`).
    """

    def __init__(self, state: ProtectionState, count: int) -> None:
        self.state = state
        self.deadlines = RawArray("d", count)
        self.applied = RawArray("d", count)
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)

    def fileno(self) -> int:
        """The pipe end the supervisor waits on (readable when a worker changed its slot)."""
        return self._read_fd

    def wake(self) -> None:
        try:
            os.write(self._write_fd, b"!")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def for_slot(self, slot: int) -> SlotProtection:
        return SlotProtection(self, slot)

    def clear(self, slot: int) -> None:
        """Worker process ``slot`` has exited: it runs nothing any more."""
        self.deadlines[slot] = 0.0

    def serve(self, before_ack: Optional[Callable[[], None]] = None) -> None:
        """Apply the slots to the state (called by the supervisor's wait loop).

        ``before_ack`` runs after the agent call, before the waiting workers are
        told: the supervisor passes on a stop that came meanwhile, so that a
        worker sees it before it starts its task.
        """
        try:
            while os.read(self._read_fd, 4096):
                pass
        except BlockingIOError:
            pass
        wanted = list(self.deadlines)
        self.state.update(wanted)
        if before_ack is not None:
            before_ack()
        for slot, deadline in enumerate(wanted):
            self.applied[slot] = deadline

    def close(self) -> None:
        """Release the protection (the supervisor is stopping) and close the pipe."""
        for slot in range(len(self.deadlines)):
            self.deadlines[slot] = 0.0
        self.state.release()
        os.close(self._read_fd)
        os.close(self._write_fd)


class SlotProtection:
    """A worker process's hooks under the supervisor: write the slot, wait for it to be applied."""

    def __init__(self, shared: SharedProtection, slot: int) -> None:
        self.shared = shared
        self.slot = slot

    def busy(self, needed_s: float, task: str, message_id: Optional[str]) -> None:
        """Ask for protection and wait until it is applied, at most the agent's timeout + 0.5 s."""
        until = time.monotonic() + needed_s
        self.shared.deadlines[self.slot] = until
        self.shared.wake()
        limit = time.monotonic() + self.shared.state.client.timeout_s + 0.5
        while self.shared.applied[self.slot] != until:
            if time.monotonic() >= limit:
                logger.warning(
                    "task %s message %s: the supervisor did not apply ECS task protection "
                    "within %.1f s; starting the task anyway",
                    task,
                    message_id,
                    self.shared.state.client.timeout_s + 0.5,
                )
                return
            time.sleep(_ACK_POLL_S)

    def idle(self) -> None:
        if self.shared.deadlines[self.slot] != 0.0:
            self.shared.deadlines[self.slot] = 0.0
            self.shared.wake()

    def due_at(self) -> Optional[float]:
        """None: the supervisor tries a failed enable again (:meth:`ProtectionState.update`)."""
        return None

    def run_due(self) -> None:
        """Nothing to do here (see :meth:`due_at`)."""
