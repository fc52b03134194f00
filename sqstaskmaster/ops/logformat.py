"""Log formats: ``text`` (the default) and ``json`` (one object per line).

A JSON line has ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
``process``, and, where known, ``task``, ``message_id``, ``receive_count``,
``duration_s`` and ``outcome``; an exception is one ``exception`` string.
The worker sets the task fields for the message it is handling
(:func:`task_context`), so every line logged meanwhile, by this package or
by the task, carries them; a record's own ``extra`` fields win.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any, Dict, Iterator, Optional

TEXT_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")
#: The task fields a JSON line carries when they are known.
TASK_FIELDS = ("task", "message_id", "receive_count", "duration_s", "outcome")

# The message this process is handling (a worker runs one at a time). A plain
# module global, not a context variable: heartbeat threads must see it too.
_context: Dict[str, Any] = {}


@contextlib.contextmanager
def task_context(**fields: Any) -> Iterator[None]:
    """Tag every log line in the block with ``fields`` (see :data:`TASK_FIELDS`)."""
    saved = dict(_context)
    _context.update(fields)
    try:
        yield
    finally:
        _context.clear()
        _context.update(saved)


def add_to_context(**fields: Any) -> None:
    """Add fields (an outcome, a duration) to the current :func:`task_context`."""
    _context.update(fields)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        data: Dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for field in TASK_FIELDS:
            value = getattr(record, field, None)
            if value is None:
                value = _context.get(field)
            if value is not None:
                data[field] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, default=str)


def _iso_time(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def configure(level: int, log_format: str = "text", stream: Optional[Any] = None) -> None:
    """Set up the root logger like ``logging.basicConfig``, in ``text`` or ``json``."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be 'text' or 'json', got {log_format!r}")
    handler = logging.StreamHandler(stream)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
