"""An isolated task's exception, raised again in the parent with the task's own class.

The child reports its exception as text: the class's module and qualified
name, ``str(error)`` and the formatted traceback, as JSON strings. When that
class can be imported in the parent and derives from ``Exception``, the parent
raises an instance of a class derived from both it and
:class:`~sqstaskmaster.errors.ChildTaskError`, so ``except ValueError``, a
``notify`` that groups errors by class, and a retry rule by type all see the
task's class, while ``except ChildTaskError`` still catches every isolated
failure. Otherwise (a class defined inside a function, a ``BaseException``
that is not an ``Exception``, a class that cannot be subclassed, the worker's
own ``WorkerShutdownError``) it is a plain ``ChildTaskError``.

The child side is here too: :func:`error_report` and :func:`result_report`
are the JSON reports a child writes to its parent.

The instance is made without calling the task class's ``__init__`` or
``__new__`` (they may require arguments the parent does not have): its
``args`` are ``(message,)`` and ``str()`` gives the child's message. The
derived classes are cached, one per task class.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import traceback
from types import TracebackType
from typing import Any, Dict, Optional

from ..errors import ChildTaskError, TaskControl, WorkerShutdownError

logger = logging.getLogger(__name__)

#: Set on a task's exception (in the child) that its task's ``throws`` lists:
#: the parent's rebuilt error then has ``rejected = True`` (a permanent failure).
REJECTED_MARK = "_sqstaskmaster_rejected"

#: Largest JSON document (bytes, UTF-8) a task's return value may encode to.
MAX_RESULT_BYTES = 1024 * 1024
# An error report carries at most this much message and traceback text each.
MAX_ERROR_TEXT = 64 * 1024
# Frames of these files are left out of a task's traceback.
_HERE = os.path.dirname(os.path.abspath(__file__))
_PLUMBING_FILES = frozenset(
    [os.path.join(_HERE, name) for name in ("child_process.py", "fork.py", "strategies.py")]
    + [os.path.join(_HERE, "reuse_child.py"), os.path.join(os.path.dirname(_HERE), "isolation.py")]
)

# Task exception class -> its class derived with ChildTaskError (None: cannot be derived).
_DERIVED: Dict[type, Optional[type]] = {}
# Py_TPFLAGS_HEAPTYPE: set on classes made by a class statement or type().
_HEAP_TYPE = 1 << 9


def child_task_error(
    module: Any, qualname: Any, message: str, traceback: str, type_name: str, pid: Optional[int]
) -> ChildTaskError:
    """The error to raise in the parent for an exception reported by a child."""
    cls = _importable_exception_class(module, qualname)
    derived = _derived_class(cls) if cls is not None else None
    if derived is not None:
        try:
            error = _instance(derived, message)
            _fill(error, type_name, message, traceback, pid)
            return error
        except Exception as failure:  # a class whose attributes refuse ours
            logger.debug(
                "%s from the child process %s is raised as ChildTaskError: %r",
                type_name,
                pid,
                failure,
            )
    return ChildTaskError(type_name, message, traceback, pid)


def _importable_exception_class(module: Any, qualname: Any) -> Optional[type]:
    """The class named ``module``.``qualname`` in this process, if an Exception class."""
    if not isinstance(module, str) or not isinstance(qualname, str) or "<locals>" in qualname:
        return None
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception as error:  # ImportError, AttributeError, or the module's own import error
        logger.debug("exception class %s.%s is not importable here: %r", module, qualname, error)
        return None
    if (
        isinstance(found, type)
        and issubclass(found, Exception)
        and not issubclass(found, ChildTaskError)
        # Only the worker itself may stop a task for shutdown (it hands the message back).
        and not issubclass(found, WorkerShutdownError)
        and found.__module__ == module
        and found.__qualname__ == qualname
    ):
        return found
    return None


def _derived_class(cls: type) -> Optional[type]:
    if cls in _DERIVED:
        return _DERIVED[cls]
    namespace = {
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        # The task class's own __str__/__repr__ may read attributes its
        # __init__ sets, which this instance never got.
        "__str__": _child_str,
        "__repr__": _child_repr,
    }
    derived: Optional[type]
    try:
        derived = type(cls.__name__, (cls, ChildTaskError), namespace)
    except Exception as error:  # layout conflict, metaclass or __init_subclass__ refusing
        logger.debug("cannot derive %s with ChildTaskError: %r", cls.__qualname__, error)
        derived = None
    _DERIVED[cls] = derived
    return derived


def _instance(derived: type, message: str) -> Any:
    """An instance of ``derived`` made by its nearest built-in base, skipping user constructors."""
    base = next(kind for kind in derived.__mro__ if not kind.__flags__ & _HEAP_TYPE)
    error: Any = base.__new__(derived, message)  # type: ignore[call-overload]
    error.args = (message,)
    return error


def _fill(error: Any, type_name: str, message: str, traceback: str, pid: Optional[int]) -> None:
    error.type_name = type_name
    error.message = message
    error.traceback = traceback
    error.pid = pid


def _child_str(self: Any) -> str:
    return str(self.message)


def _child_repr(self: Any) -> str:
    return f"{type(self).__name__}({self.message!r})"


# -- the child's reports -----------------------------------------------------------


def _clip(text: str) -> str:
    if len(text) <= MAX_ERROR_TEXT:
        return text
    half = MAX_ERROR_TEXT // 2
    return text[:half] + "\n[... clipped ...]\n" + text[-half:]


def _type_name(error: BaseException) -> str:
    kind = type(error)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _task_frames(tb: Optional[TracebackType]) -> Optional[TracebackType]:
    """The traceback without its leading frames in this package's isolation plumbing."""
    start = tb
    while start is not None and start.tb_frame.f_code.co_filename in _PLUMBING_FILES:
        start = start.tb_next
    return start if start is not None else tb


def error_report(error: BaseException) -> bytes:
    frames = _task_frames(error.__traceback__)
    text = "".join(traceback.format_exception(type(error), error, frames))
    report = {
        "ok": False,
        "type": _type_name(error),
        "module": type(error).__module__,
        "qualname": type(error).__qualname__,
        "message": _clip(str(error)),
        "traceback": _clip(text),
    }
    if getattr(error, "__dict__", {}).get(REJECTED_MARK):
        report["rejected"] = True
    if isinstance(error, TaskControl):
        control = error.report()
        report["control"] = {
            key: _clip(value) if isinstance(value, str) else value for key, value in control.items()
        }
    return json.dumps(report).encode("utf-8")


def result_report(result: Any, drop_unsendable: bool) -> bytes:
    """The success report; a result that cannot cross as JSON is dropped or an error report."""
    problem: Exception
    try:
        encoded = json.dumps({"ok": True, "result": result}).encode("utf-8")
    except Exception as error:  # TypeError, ValueError (circular), RecursionError (deep)
        problem = TypeError(
            f"run() returned {type(result).__name__}, which cannot be sent to the "
            f"parent process as JSON ({type(error).__name__}: {error}); return plain JSON "
            "values (dict, list, str, int, float, bool, None)"
        )
    else:
        if len(encoded) <= MAX_RESULT_BYTES:
            return encoded
        problem = ValueError(
            f"run() returned {len(encoded)} bytes of JSON, over the {MAX_RESULT_BYTES} "
            "byte limit for an isolated task's result; store large output elsewhere "
            "(for example S3) and return a reference to it"
        )
    if drop_unsendable:
        return json.dumps({"ok": True, "result": None, "dropped": str(problem)}).encode("utf-8")
    try:
        raise problem
    except Exception as raised:  # gives it a traceback for the report
        return error_report(raised)
