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
hangs costs at most :data:`AGENT_TIMEOUT_S` per call, is logged and notified
once per kind of failure, and never fails a task.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import math
import os
import socket
import time
from multiprocessing.sharedctypes import RawArray
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Set, Tuple
from urllib.parse import urlsplit

from .errors import TaskProtectionError

logger = logging.getLogger(__name__)

AGENT_URI_VARIABLE = "ECS_AGENT_URI"
PROTECTION_PATH = "/task-protection/v1/state"
AGENT_TIMEOUT_S = 2.0
MIN_MINUTES = 1
MAX_MINUTES = 2880
SETTINGS = ("auto", "on", "off")
# How often a worker process looks whether the supervisor has applied its request.
_ACK_POLL_S = 0.005


def agent_uri_for(setting: Any, environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The agent URI to use for ``ecs_protection`` = ``setting``, or None when protection is off.

    ``"auto"`` (or None): on when ``ECS_AGENT_URI`` is set. ``"on"`` (or True)
    without ``ECS_AGENT_URI`` is an error: the worker is not running on ECS.
    """
    environ = os.environ if environ is None else environ
    value = {True: "on", False: "off", None: "auto"}.get(setting, setting)
    if value not in SETTINGS:
        raise ValueError(f"ecs_protection must be 'auto', 'on' or 'off', got {setting!r}")
    uri = environ.get(AGENT_URI_VARIABLE) or None
    if value == "off":
        return None
    if value == "on" and uri is None:
        raise ValueError(
            f"ecs_protection 'on' needs {AGENT_URI_VARIABLE}, which ECS sets in every "
            "container; it is not set here. Use 'auto' (on only under ECS) or 'off'."
        )
    if uri is not None:
        agent_address(uri)
    return uri


def agent_address(agent_uri: str) -> Tuple[str, int, str]:
    """``(host, port, path)`` of an ``ECS_AGENT_URI``; ValueError naming it when malformed."""
    parts = urlsplit(agent_uri)
    try:
        port = parts.port or 80
    except ValueError:
        port = 0
    if parts.scheme != "http" or not parts.hostname or not port:
        raise ValueError(
            f"{AGENT_URI_VARIABLE} must be an http://HOST[:PORT]/PATH URL, got {agent_uri!r}; "
            "ECS sets it in every container: unset it outside ECS, or turn scale-in "
            "protection off (--ecs-protection off)"
        )
    return parts.hostname, port, parts.path.rstrip("/")


def protection_minutes(seconds: float) -> int:
    """``seconds`` rounded up to whole minutes, within the agent's 1 to 2,880."""
    return max(MIN_MINUTES, min(MAX_MINUTES, math.ceil(seconds / 60.0)))


class AgentClient:
    """PUTs the protection state to the ECS agent, each call bounded by ``timeout_s`` seconds.

    :meth:`put` never raises. The first failure of each kind (timeout,
    unreachable, an HTTP status, the agent's failure reason or error code) is
    logged as an error and passed to ``notify(exception, context=...)``;
    repeats are logged at DEBUG. ``calls`` counts the calls made.
    """

    def __init__(
        self,
        agent_uri: str,
        timeout_s: float = AGENT_TIMEOUT_S,
        notify: Optional[Callable[..., Any]] = None,
    ) -> None:
        self.agent_uri = agent_uri
        self.host, self.port, path = agent_address(agent_uri)
        self.path = path + PROTECTION_PATH
        self.timeout_s = timeout_s
        self.notify = notify
        self.calls = 0
        self._kinds_seen: Set[str] = set()

    def put(self, enabled: bool, minutes: Optional[int] = None) -> bool:
        """Ask for protection on (for ``minutes``) or off; True when the agent applied it."""
        body: Dict[str, Any] = {"ProtectionEnabled": enabled}
        if enabled:
            body["ExpiresInMinutes"] = protection_minutes(60.0 * (minutes or MIN_MINUTES))
        action = f"enable for {body['ExpiresInMinutes']} min" if enabled else "release"
        self.calls += 1
        started = time.monotonic()
        try:
            status, payload = self._request(json.dumps(body).encode())
        except (TimeoutError, socket.timeout):
            return self._failed(action, "timeout", f"no answer within {self.timeout_s:g} s")
        except (OSError, http.client.HTTPException) as error:
            return self._failed(action, "unreachable", f"{type(error).__name__}: {error}")
        except Exception as error:
            return self._failed(action, "unexpected", f"{type(error).__name__}: {error}")
        kind, detail = _judge(status, payload)
        if kind is not None:
            return self._failed(action, kind, detail)
        logger.info(
            "ECS task scale-in protection %s: done in %.3f s (%s)",
            action,
            time.monotonic() - started,
            detail,
        )
        return True

    def _request(self, body: bytes) -> tuple:
        deadline = time.monotonic() + self.timeout_s
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        raw: Optional[socket.socket] = None
        try:
            connection.connect()
            raw = connection.sock
            # The send and every read share what is left of the one bound.
            connection.sock = _DeadlineSocket(raw, deadline)
            connection.request(
                "PUT", self.path, body=body, headers={"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            return response.status, response.read(64 * 1024)
        finally:
            connection.close()
            if raw is not None:
                raw.close()

    def _failed(self, action: str, kind: str, detail: str) -> bool:
        if kind in self._kinds_seen:
            logger.debug(
                "ECS task scale-in protection %s failed again (%s): %s", action, kind, detail
            )
            return False
        self._kinds_seen.add(kind)
        error = TaskProtectionError(action, kind, detail)
        logger.error("%s (agent %s; reported once per kind of failure)", error, self.agent_uri)
        if self.notify is not None:
            try:
                self.notify(error, context={"agent_uri": self.agent_uri, "kind": kind})
            except Exception:
                logger.exception("notify raised while reporting %r", error)
        return False


class _DeadlineSocket:
    """A connected socket whose send and reads all end by ``deadline`` (monotonic seconds).

    A socket timeout bounds each operation alone, so an agent that trickles its
    answer a byte at a time would never time out; here each operation gets what
    is left of the call's one bound. http.client reads through :meth:`makefile`.
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def _left(self) -> float:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the agent call's time ran out")
        return remaining

    def sendall(self, data: Any) -> None:
        self._sock.settimeout(self._left())
        self._sock.sendall(data)

    def recv_into(self, buffer: Any) -> int:
        self._sock.settimeout(self._left())
        return self._sock.recv_into(buffer)

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self))

    def close(self) -> None:
        """Nothing: the response may still read; the caller closes the socket after it."""


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: _DeadlineSocket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._sock.recv_into(buffer)


def _judge(status: int, payload: bytes) -> tuple:
    """(failure kind or None, detail) for an agent response."""
    try:
        document = json.loads(payload or b"{}")
    except ValueError:
        document = None
    if not isinstance(document, dict):
        return f"HTTP {status}", f"HTTP {status}, body not JSON: {payload[:200]!r}"
    if isinstance(document.get("failure"), dict):
        failure = document["failure"]
        reason = failure.get("Reason", "unknown")
        return f"failure {reason}", f"HTTP {status}, failure {failure}"
    if isinstance(document.get("error"), dict):
        error = document["error"]
        code = error.get("Code", "unknown")
        return f"error {code}", f"HTTP {status}, {code}: {error.get('Message', '')}"
    if status != 200 or not isinstance(document.get("protection"), dict):
        return f"HTTP {status}", f"HTTP {status}, unexpected body {payload[:200]!r}"
    protection = document["protection"]
    return None, f"expires {protection.get('ExpirationDate')}, task {protection.get('TaskArn')}"


class ProtectionState:
    """Protected from the first busy moment until everything is idle; makes the agent calls.

    ``protected_until`` (``time.monotonic()``) is how far the last enable the
    agent applied reaches; None when released or never applied. A call is made
    only when the state must change, or when a task needs protection past
    ``protected_until``. A failed enable is not recorded as protection: the
    next task's start tries again (:meth:`update` does not retry for the same
    busy deadlines, so a failing agent is not called in a loop).
    """

    def __init__(self, client: AgentClient) -> None:
        self.client = client
        self.protected_until: Optional[float] = None
        self.tried = False  # an enable was tried since the last release
        self._failed_for: Set[float] = set()  # the busy deadlines the last failed enable was for

    def cover(self, until: float) -> bool:
        """Make sure the task is protected until at least ``until`` (monotonic seconds).

        True when it is; False when the agent call failed (logged by the client).
        """
        if self.protected_until is not None and self.protected_until >= until:
            return True
        now = time.monotonic()
        minutes = protection_minutes(until - now)
        self.tried = True
        if not self.client.put(True, minutes):
            return False
        self.protected_until = now + 60.0 * minutes
        return True

    def release(self) -> None:
        """Release the protection, if an enable was tried (a timed-out one may have applied)."""
        self._failed_for = set()
        if not self.tried:
            return
        self.tried = False
        self.protected_until = None
        self.client.put(False)

    def update(self, deadlines: Sequence[float]) -> None:
        """Cover the latest of the busy deadlines (above 0), or release when there is none.

        After a failed enable, the call is tried again only for a deadline not
        seen then: a task that started since.
        """
        busy = {deadline for deadline in deadlines if deadline > 0}
        if not busy:
            self.release()
        elif not busy <= self._failed_for:
            self._failed_for = set() if self.cover(max(busy)) else busy


def make_state(agent_uri: Optional[str], notify: Optional[Callable[..., Any]]) -> Any:
    """A ProtectionState for ``agent_uri``, or None when there is no agent."""
    if agent_uri is None:
        return None
    logger.info("ECS task scale-in protection on, through the agent at %s", agent_uri)
    return ProtectionState(AgentClient(agent_uri, notify=notify))


def inline_protection(setting: Any, notify: Optional[Callable[..., Any]]) -> Any:
    """A single worker process's protection hooks for ``ecs_protection`` = ``setting``, or None."""
    state = make_state(agent_uri_for(setting), notify)
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
