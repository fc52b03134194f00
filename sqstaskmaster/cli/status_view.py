"""How the ``tasks``, ``task`` and ``cancel`` commands show task statuses: text only.

The table of ``tasks`` (one row per message, cut to the terminal's width by
shortening progress notes), the full view of ``task ID``, and what ``cancel``
tells about what happens next. Nothing here calls DynamoDB.
"""

from __future__ import annotations

import json
import logging
import textwrap
import time
from typing import List, Optional, Sequence

from ..ops.status_items import ATTRIBUTES, ENDED, HANDED_BACK, TIME_ATTRIBUTES
from ..ops.task_status import STALE_HEARTBEAT_S, TaskStatus, iso_utc

logger = logging.getLogger(__name__)

COLUMNS = ("ID", "TASK", "STATE", "PROGRESS", "ELAPSED", "HEARTBEAT", "WORKER", "RECV")
BAR_CELLS = 10
#: The PROGRESS column's narrowest (when notes are cut to fit the width) and widest.
_MIN_PROGRESS = len("[##########] 100%")
_MAX_PROGRESS = 60
_RED = "\x1b[31m"
_RESET = "\x1b[0m"
#: States after which SQS may deliver the message again (a retry).
_RETRIED_MAYBE = ("failed", "timed_out", "refused")


def bar(fraction: Optional[float], note: Optional[str] = None) -> str:
    """``[######    ]  60% note``; ``-`` without progress."""
    if fraction is None:
        return "-" if not note else note
    fraction = min(max(float(fraction), 0.0), 1.0)
    filled = int(fraction * BAR_CELLS + 1e-9)
    text = f"[{'#' * filled}{' ' * (BAR_CELLS - filled)}] {fraction * 100:3.0f}%"
    return f"{text} {note}" if note else text


def clock(seconds: Optional[float]) -> str:
    """``h:mm:ss`` (``-`` for None)."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def age(seconds: float) -> str:
    """``4s``, ``3m``, ``2h``, ``5d``: the largest unit that fits, rounded down."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def shown_state(status: TaskStatus) -> str:
    """The state as shown: ``cancelling`` for a running task asked to cancel."""
    if status.state is None:
        return "not received"
    if status.running and status.cancel_requested:
        return "cancelling"
    return status.state


def heartbeat(status: TaskStatus, now: float, stale_s: float) -> str:
    """``4s ago``, ``STALE 3m ago`` past ``stale_s`` seconds, ``-`` when it does not run."""
    seconds = status.heartbeat_age_s_at(now)
    if seconds is None:
        return "-"
    text = f"{age(seconds)} ago"
    return f"STALE {text}" if seconds > stale_s else text


def worker(status: TaskStatus) -> str:
    """``host:pid`` (``-`` when no worker wrote it)."""
    if status.host is None:
        return "-"
    return status.host if status.pid is None else f"{status.host}:{status.pid}"


def _cut(text: str, most: int) -> str:
    return text if len(text) <= most else text[: max(most - 1, 0)] + "\u2026"


def _progress_cell(status: TaskStatus, most: int) -> str:
    """The bar, and as much of the note as ``most`` characters leave (the note is cut)."""
    if status.progress is None:
        return _cut(status.progress_note or "-", most)
    text = bar(status.progress)
    room = most - len(text) - 1
    if status.progress_note and room >= 2:
        text += " " + _cut(status.progress_note, room)
    return text


def _row(status: TaskStatus, now: float, stale_s: float) -> List[str]:
    return [
        status.message_id,
        status.task or "-",
        shown_state(status),
        bar(status.progress, status.progress_note),
        clock(status.elapsed_s_at(now)),
        heartbeat(status, now, stale_s),
        worker(status),
        "-" if status.receive_count is None else str(status.receive_count),
    ]


def table(
    statuses: Sequence[TaskStatus],
    *,
    now: Optional[float] = None,
    width: Optional[int] = None,
    stale_s: float = STALE_HEARTBEAT_S,
    colour: bool = False,
) -> str:
    """The ``tasks`` table, rows in the order given. Progress notes are cut so that the
    PROGRESS column takes at most 60 characters and rows fit ``width`` (None: any);
    a stale heartbeat (over ``stale_s`` seconds) is marked STALE, in red when ``colour``."""
    now = time.time() if now is None else now
    rows = [_row(status, now, stale_s) for status in statuses]
    widths = [len(column) for column in COLUMNS]
    for row in rows:
        widths = [max(most, len(cell)) for most, cell in zip(widths, row)]
    progress, beat = COLUMNS.index("PROGRESS"), COLUMNS.index("HEARTBEAT")
    widths[progress] = min(widths[progress], _MAX_PROGRESS)
    if width is not None:
        spare = width - (sum(widths) + 2 * (len(COLUMNS) - 1))
        widths[progress] = max(widths[progress] + min(spare, 0), _MIN_PROGRESS)
    lines = ["  ".join(name.ljust(widths[index]) for index, name in enumerate(COLUMNS)).rstrip()]
    for status, row in zip(statuses, rows):
        row[progress] = _progress_cell(status, widths[progress])
        cells = [cell.ljust(widths[index]) for index, cell in enumerate(row)]
        if colour and row[beat].startswith("STALE"):
            cells[beat] = _RED + cells[beat] + _RESET
        lines.append("  ".join(cells).rstrip())
    if not rows:
        lines.append("(no tasks)")
    return "\n".join(lines) + "\n"


# -- task ID ---------------------------------------------------------------------------


_LABEL = 21


def _line(name: str, text: str) -> str:
    return f"{name:{_LABEL}s}{text}".replace("\n", "\n" + " " * _LABEL)


def _time_text(epoch_s: float, now: float) -> str:
    ago = now - epoch_s
    when = f"in {age(-ago)}" if ago < 0 else f"{age(ago)} ago"
    return f"{iso_utc(epoch_s)}  ({when})"


def _attribute_text(status: TaskStatus, name: str, now: float, stale_s: float) -> str:
    value = getattr(status, name)
    if name == "state":
        if status.running and status.cancel_requested:
            return f"{value} (cancel requested: its worker stops it after its next heartbeat)"
        return str(value)
    if name == "heartbeat_at" and status.stale(stale_s, now):
        return f"{_time_text(value, now)}  STALE: its worker may be gone"
    if name in TIME_ATTRIBUTES:
        return _time_text(value, now)
    if name == "progress":
        return bar(value)
    return str(value)


def _pretty_result(status: TaskStatus) -> str:
    text = str(status.result)
    try:
        return json.dumps(json.loads(text), indent=2, sort_keys=True)
    except ValueError as error:
        logger.warning(
            "message %s: its result is not JSON (%s); shown as stored", status.message_id, error
        )
        return text


def details(
    status: TaskStatus, *, now: Optional[float] = None, stale_s: float = STALE_HEARTBEAT_S
) -> str:
    """``task ID``: every attribute the item has (times in UTC, with their age), the chain
    of a continued task, the elapsed time, the result (pretty JSON) or the error."""
    now = time.time() if now is None else now
    lines = []
    for name in ATTRIBUTES:
        if getattr(status, name) is None or name in ("result", "error_type", "error"):
            continue
        lines.append(_line(name, _attribute_text(status, name, now, stale_s)))
        if name == "message_id" and len(status.chain) > 1:
            lines.append(_line("chain", " -> ".join(status.chain)))
            lines.append(
                _line(
                    "",
                    f"(went on in {len(status.chain) - 1} continuation "
                    "message(s); this is the latest)",
                )
            )
        if name == "updated_at":
            lines.append(_line("elapsed", clock(status.elapsed_s_at(now))))
    for name, value in sorted(status.extra.items()):
        lines.append(_line(name, str(value)))
    if status.result is not None:
        lines.append("result:")
        lines.extend("  " + line for line in _pretty_result(status).splitlines())
    if status.error is not None:
        lines.append(f"error: {status.error_type or 'Error'}: {status.error}")
    return "\n".join(lines) + "\n"


# -- cancel ----------------------------------------------------------------------------


def cancel_report(status: TaskStatus) -> str:
    """What ``cancel`` marked and what happens next, from the last item it marked."""
    marked = status.message_id
    if len(status.chain) > 1:
        head = (
            f"Cancel requested for message {status.chain[0]}, which went on as "
            f"{' -> '.join(status.chain[1:])}: all marked, the latest is {marked}."
        )
    else:
        head = f"Cancel requested for message {marked}."
    return f"{textwrap.fill(head, 88)}\n{textwrap.fill(_next(status), 88)}\n"


def _next(status: TaskStatus) -> str:
    if status.state is None:
        return (
            "No worker has received it yet: the worker that receives it deletes it "
            "without running it."
        )
    if status.state in ENDED:
        text = f"It had already ended ({status.state}): nothing to stop."
        if status.state in _RETRIED_MAYBE:
            text += (
                " Should SQS deliver it again for a retry, the worker that receives it "
                "deletes it without running it."
            )
        return text
    if status.running:
        return (
            f"Task {status.task or '?'} runs on {worker(status)}: the worker running it learns "
            "it at its next heartbeat, the task is asked to stop (context.stop_requested) and "
            "is stopped after the worker's shutdown grace; its message is deleted, not retried."
        )
    if status.state == HANDED_BACK:
        return (
            "It was handed back and waits in the queue: the worker that receives it next "
            "deletes it without running it."
        )
    return (
        f"Its state is {status.state}: should a worker receive it again, it deletes it "
        "without running it."
    )


def json_lines(statuses: List[TaskStatus], now: Optional[float] = None) -> str:
    """``tasks --json``: one JSON array of :meth:`TaskStatus.to_json` dicts, one line."""
    return json.dumps([status.to_json(now) for status in statuses]) + "\n"
