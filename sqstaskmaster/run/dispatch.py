"""Every ``run`` a handler class resolves to runs under the handler's execution strategy.

``handler.run()`` is looked up on the class, and a task's body must never run
outside its strategy (Forked runs it in a child, under the hard timeout). So
whatever ``run`` resolves to on a handler class is a dispatcher:

- a ``run`` defined in the class is wrapped as the class is made (:func:`dispatching`);
- a ``run`` the class inherits from a class that is no handler (a mixin,
  anywhere in the MRO) gets a dispatcher of its own in the inheriting class,
  which looks the body up at each call (:func:`inherited`), so a later patch of
  the mixin's ``run`` is followed;
- a ``run`` assigned to a handler class later (``H.run = f``,
  ``patch.object(H, "run", ...)``), or deleted, is covered when a handler of
  that class is entered (:func:`ensure`), before its body can run. No
  metaclass: a handler class still mixes with any base whose metaclass
  derives from ``ABCMeta``, as with 0.0.11.

A dispatcher hands the body to the entered strategy's runner
(``handler._runner``); without one (signal mode, outside the ``with`` block,
or in the child itself) it calls the body in place. A callable that is not a
descriptor (a ``MagicMock``) is called without ``self``, as a plain class
attribute would be. Static and class methods and abstract methods are left alone.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Tuple

# Set on every dispatcher: the body it wraps (None: looked up at each call).
MARK = "__task_body__"


def _is_body(value: Any) -> bool:
    """Whether ``value``, found as ``run`` on a class, is a body to dispatch."""
    return (
        callable(value)
        and not isinstance(value, (staticmethod, classmethod))
        and not getattr(value, "__isabstractmethod__", False)
        and not hasattr(value, MARK)
    )


def _dispatch(handler: Any, body: Callable[..., Any], args: Tuple, kwargs: Dict) -> Any:
    runner = handler._runner
    if runner is None:
        return body(*args, **kwargs)
    return runner(functools.partial(body, *args, **kwargs) if args or kwargs else body)


def dispatching(body: Any) -> Callable[..., Any]:
    """Wrap ``body`` (a class's ``run``) so an entered strategy decides where it runs."""
    if hasattr(body, "__get__"):

        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            return _dispatch(self, body.__get__(self, type(self)), args, kwargs)

        functools.update_wrapper(run, body)
    else:  # a mock set on the class: called as a plain attribute, without self

        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            return _dispatch(self, body, args, kwargs)

    setattr(run, MARK, body)
    return run


def inherited(owner: type) -> Callable[..., Any]:
    """A dispatcher for ``owner``: the ``run`` that follows ``owner`` in the MRO, at each call."""

    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        return _dispatch(self, super(owner, self).run, args, kwargs)  # type: ignore[arg-type]

    run.__qualname__ = f"{owner.__qualname__}.run"
    run.__module__ = owner.__module__
    setattr(run, MARK, None)
    return run


def cover(cls: type) -> None:
    """Make ``run``, as ``cls`` resolves it, a dispatcher (at class creation, after a delete)."""
    own = cls.__dict__.get("run")
    if own is not None:
        if _is_body(own):
            type.__setattr__(cls, "run", dispatching(own))
        return
    for base in cls.__mro__[1:]:
        if "run" in base.__dict__:
            if _is_body(base.__dict__["run"]):
                type.__setattr__(cls, "run", inherited(cls))
            return


def ensure(cls: type, root: type) -> None:
    """At a handler's entry: a ``run`` set on ``cls`` or one of its bases since the
    class was made (``H.run = f``, ``patch.object(H, "run", ...)``, a ``del``) is
    made a dispatcher now, before the body can run.

    ``root`` is the base handler class: a ``run`` found on a handler class is
    wrapped there; one found on a mixin gets a dispatcher in ``cls``.
    """
    for klass in cls.__mro__:
        if "run" in klass.__dict__:
            if _is_body(klass.__dict__["run"]):
                cover(klass if issubclass(klass, root) else cls)
            return
