"""Shared memory between a worker process and its task child: checkpoints and the stop flag.

An isolated task's checkpoint must reach the worker at once: the child may be
killed a moment after saving it (its grace ran out, its hard deadline came).
A pipe would need the worker to read it in time, and a frame cut short by the
kill would be lost. So each worker process maps one :class:`CheckpointBox`
(anonymous ``MAP_SHARED`` memory, made before its first task child is forked,
so every child it forks shares it) and the child writes into it; what is
there survives the child's death.

Layout: a header (the worker's stop flag, the child's "stop seen" flag, the
number of checkpoints of this task), the task's progress (a fraction and a
note, under a sequence number that is odd while the child writes them, so
the worker never takes half of one), then two slots, each a sequence number,
a length, a CRC-32 and up to :data:`MAX_CHECKPOINT_BYTES` of JSON text. A
checkpoint goes to the slot the previous one is not in, its sequence number
last; the worker takes the highest-numbered slot whose CRC matches, so a
child killed in the middle of a write leaves the checkpoint before it intact.

One task runs at a time per worker process: the worker clears the box before
each task child starts (:meth:`CheckpointBox.clear`) and reads it when the
task has ended (:meth:`CheckpointBox.read`).
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from typing import Optional, Tuple

from ..sqs.continuation import MAX_CHECKPOINT_BYTES

_STOP = 0  # the worker asks the task to stop (1) or not (0)
_SEEN = 1  # the task read a stop request
_COUNT = struct.Struct("<Q")  # at offset 8: checkpoints saved in this task
_HEADER_BYTES = 64
_PROGRESS = struct.Struct("<QdI")  # at _HEADER_BYTES: sequence number, fraction, note length
_NOTE_BYTES = 1024
_PROGRESS_BYTES = _PROGRESS.size + _NOTE_BYTES
_SLOTS_AT = _HEADER_BYTES + _PROGRESS_BYTES
_SLOT = struct.Struct("<QII")  # sequence number, length, CRC-32
_SLOT_BYTES = _SLOT.size + MAX_CHECKPOINT_BYTES


class CheckpointBox:
    """One worker process's shared checkpoint memory (see the module docstring)."""

    def __init__(self) -> None:
        self._memory = mmap.mmap(-1, _SLOTS_AT + 2 * _SLOT_BYTES)  # MAP_SHARED

    # -- the worker's side ------------------------------------------------------

    def clear(self) -> None:
        """Forget the last task's checkpoints and flags (before the next task starts)."""
        self._memory[0:_SLOTS_AT] = bytes(_SLOTS_AT)
        for slot in (0, 1):
            start = _slot_start(slot)
            self._memory[start : start + _SLOT.size] = bytes(_SLOT.size)

    def clear_progress(self) -> None:
        """Forget the last task's progress (before the next task starts)."""
        self._memory[_HEADER_BYTES:_SLOTS_AT] = bytes(_PROGRESS_BYTES)

    def set_stop(self, stop: bool) -> None:
        """Tell the task whether it is asked to stop."""
        self._memory[_STOP] = 1 if stop else 0

    def read(self) -> Tuple[int, Optional[str], bool]:
        """(checkpoints saved, the last complete one's JSON text or None, stop seen)."""
        count = _COUNT.unpack_from(self._memory, 8)[0]
        best: Tuple[int, Optional[str]] = (0, None)
        for slot in (0, 1):
            start = _slot_start(slot)
            sequence, length, crc = _SLOT.unpack_from(self._memory, start)
            if sequence <= best[0] or length > MAX_CHECKPOINT_BYTES:
                continue
            data = self._memory[start + _SLOT.size : start + _SLOT.size + length]
            if zlib.crc32(data) != crc:
                continue
            try:
                best = (sequence, data.decode("utf-8"))
            except UnicodeDecodeError:
                continue
        return count, best[1], self._memory[_SEEN] == 1

    def progress(self) -> Optional[Tuple[float, str]]:
        """The task's last progress (fraction, note), or None if it reported none."""
        for _ in range(5):
            sequence, fraction, length = _PROGRESS.unpack_from(self._memory, _HEADER_BYTES)
            if sequence == 0:
                return None
            start = _HEADER_BYTES + _PROGRESS.size
            note = self._memory[start : start + min(length, _NOTE_BYTES)]
            if sequence % 2 == 0 and _PROGRESS.unpack_from(self._memory, _HEADER_BYTES)[0] == (
                sequence
            ):
                return fraction, note.decode("utf-8", errors="replace")
        return None  # the child writes it again and again right now: taken next time

    # -- the task child's side --------------------------------------------------

    def set_progress(self, fraction: float, note: str) -> None:
        """Report the task's progress (the worker writes it to the status table)."""
        data = note.encode("utf-8")[:_NOTE_BYTES]
        sequence = _PROGRESS.unpack_from(self._memory, _HEADER_BYTES)[0]
        struct.pack_into("<Q", self._memory, _HEADER_BYTES, sequence + 1)  # odd: being written
        start = _HEADER_BYTES + _PROGRESS.size
        self._memory[start : start + len(data)] = data
        struct.pack_into("<dI", self._memory, _HEADER_BYTES + 8, fraction, len(data))
        struct.pack_into("<Q", self._memory, _HEADER_BYTES, sequence + 2)

    def stop_requested(self) -> bool:
        """Whether the worker asks the task to stop; a yes is remembered as seen."""
        if self._memory[_STOP] != 1:
            return False
        self._memory[_SEEN] = 1
        return True

    def write(self, text: str) -> int:
        """Save checkpoint ``text`` (JSON, checked by the caller); returns its number."""
        data = text.encode("utf-8")
        if len(data) > MAX_CHECKPOINT_BYTES:
            raise ValueError(f"checkpoint of {len(data)} bytes is over {MAX_CHECKPOINT_BYTES}")
        sequence = _COUNT.unpack_from(self._memory, 8)[0] + 1
        start = _slot_start(sequence % 2)
        self._memory[start + _SLOT.size : start + _SLOT.size + len(data)] = data
        # The sequence number goes last: until it is written, this slot is not the newest.
        struct.pack_into("<II", self._memory, start + 8, len(data), zlib.crc32(data))
        struct.pack_into("<Q", self._memory, start, sequence)
        _COUNT.pack_into(self._memory, 8, sequence)
        return sequence


def _slot_start(slot: int) -> int:
    return _SLOTS_AT + slot * _SLOT_BYTES


_box: Optional[CheckpointBox] = None
_box_pid: Optional[int] = None
_inherited: Optional[CheckpointBox] = None


def box_for_children() -> CheckpointBox:
    """This process's box, made on first use: call it before forking a task child."""
    global _box, _box_pid
    if _box is None or _box_pid != os.getpid():
        _box, _box_pid = CheckpointBox(), os.getpid()
    return _box


def entered_task_child() -> None:
    """In a task child, just after the fork: its checkpoints go to its parent's box."""
    global _inherited, _box, _box_pid
    _inherited = _box if _box_pid == os.getppid() else None
    _box = _box_pid = None


def child_box() -> Optional[CheckpointBox]:
    """The parent's box when this process is a task child; None in a worker process."""
    return _inherited
