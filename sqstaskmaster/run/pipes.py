"""What crosses the pipes between a worker process and its task children, both ways.

A task child (fresh or reused) reports each task as one frame on its report
pipe: a 4-byte big-endian length, then a keep/retire byte (:data:`KEEP`: the
child can take another task; :data:`RETIRE`: it leaves), then the JSON report
of :mod:`sqstaskmaster.run.child_error`. A fresh child always writes RETIRE.

A reused child also reads requests, framed the same way (length, then the
JSON of a :class:`TaskFacts`); end of file on its request pipe retires it.

The child's side writes with :func:`write_frame` and reads requests with
:func:`read_frame`; the parent's side parses reports with a
:class:`FrameReader` fed what its non-blocking pipe holds.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import struct
from dataclasses import dataclass
from typing import Any, Dict, Optional

from .child_error import MAX_ERROR_TEXT, MAX_RESULT_BYTES

HEADER = struct.Struct(">I")
# A frame's first byte: the child stays for the next task, or leaves.
KEEP = b"k"
RETIRE = b"r"
# The largest report frame the parent keeps; anything beyond is a broken report.
MAX_FRAME_BYTES = 1 + MAX_RESULT_BYTES + 4 * MAX_ERROR_TEXT


def write_frame(fd: int, payload: bytes) -> None:
    """Write ``payload`` as one frame to blocking ``fd`` (the child's side)."""
    view = memoryview(HEADER.pack(len(payload)) + payload)
    while view:
        view = view[os.write(fd, view) :]


def read_frame(fd: int) -> Optional[bytes]:
    """One frame from blocking ``fd`` (the child's side).

    None at end of file before a frame; EOFError at end of file inside one.
    """
    header = _read_exactly(fd, HEADER.size, at_start=True)
    if header is None:
        return None
    return _read_exactly(fd, HEADER.unpack(header)[0], at_start=False)


def _read_exactly(fd: int, size: int, at_start: bool) -> Optional[bytes]:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            if at_start and not data:
                return None
            raise EOFError(f"end of file after {len(data)} of {size} bytes of a frame")
        data += chunk
    return data


class FrameReader:
    """The parent's parser of one child's report frames, fed as bytes arrive.

    ``frame`` is the first complete frame (a keep/retire byte, then the
    report) until :meth:`take` takes it. ``overflow`` is set for a frame over
    :data:`MAX_FRAME_BYTES`: what comes after it is read and dropped, so the
    child is never blocked on a full pipe.
    """

    def __init__(self) -> None:
        self.frame: Optional[bytes] = None
        self.overflow = False
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> None:
        """Add ``chunk`` (bytes read from the pipe)."""
        if self.overflow:
            return
        self._buffer += chunk
        if len(self._buffer) > HEADER.size + MAX_FRAME_BYTES:
            self._overflowed()
            return
        if self.frame is None and len(self._buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buffer)
            if size > MAX_FRAME_BYTES:
                self._overflowed()
            elif len(self._buffer) >= HEADER.size + size:
                self.frame = bytes(self._buffer[HEADER.size : HEADER.size + size])
                del self._buffer[: HEADER.size + size]

    def _overflowed(self) -> None:
        self.overflow = True
        self._buffer = bytearray()

    def take(self) -> Optional[bytes]:
        """The complete frame, if any, which is then no longer held."""
        frame, self.frame = self.frame, None
        return frame


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
