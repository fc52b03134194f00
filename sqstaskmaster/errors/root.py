"""The root of this package's error types, and what they share.

Each error type is a dataclass of :class:`SQSTaskMasterError`: its fields are
its constructor's arguments and attributes, its ``_text()`` the message. Also
here: ``Notify``, the type of the ``notify(exception, context=...)`` callable
every layer passes errors to.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

#: A ``notify(exception, context=...)`` callable, as 0.0.11's classes take one.
Notify = Callable[..., Any]


class SQSTaskMasterError(Exception):
    """Root of every error type this package defines.

    The types below with fields are dataclasses (``eq=False, repr=False``:
    an exception's identity, hash and repr): the fields are the constructor's
    arguments and the error's attributes, :meth:`_text` makes the message from
    them (``args`` is ``(message,)``, as for any exception made with one), and
    the error pickles by its fields.
    """

    def __post_init__(self) -> None:
        super().__init__(self._text())

    def _text(self) -> str:
        """The message, from the fields."""
        raise NotImplementedError

    def __reduce__(self) -> Any:
        if not dataclasses.is_dataclass(self):
            return super().__reduce__()
        fields = tuple(getattr(self, item.name) for item in dataclasses.fields(self))
        return (type(self), fields, self.__dict__)
