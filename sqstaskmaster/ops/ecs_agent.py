"""The ECS agent's task scale-in protection endpoint: where it is, and one bounded PUT.

ECS sets ``ECS_AGENT_URI`` in every container; :class:`AgentClient` PUTs
``{"ProtectionEnabled": true, "ExpiresInMinutes": M}`` or
``{"ProtectionEnabled": false}`` to ``$ECS_AGENT_URI/task-protection/v1/state``,
each call bounded by :data:`AGENT_TIMEOUT_S` in total. When and why the
calls are made is :mod:`sqstaskmaster.ops.ecs`'s business.
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
from typing import Any, Dict, Mapping, Optional, Set, Tuple
from urllib.parse import urlsplit

from ..errors import Notify, TaskProtectionError

# The protection's one logger, as operators know it.
logger = logging.getLogger("sqstaskmaster.ops.ecs")

AGENT_URI_VARIABLE = "ECS_AGENT_URI"
PROTECTION_PATH = "/task-protection/v1/state"
AGENT_TIMEOUT_S = 2.0
MIN_MINUTES = 1
MAX_MINUTES = 2880
SETTINGS = ("auto", "on", "off")


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
        notify: Optional[Notify] = None,
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
