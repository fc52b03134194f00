"""The root of this package's error types, and what they share.

Each error type is declared with :func:`error_type`: a dataclass whose fields
are its constructor's arguments and its attributes, and whose message is a
template formatted with them. Also here: ``Notify``, the type of the
``notify(exception, context=...)`` callable every layer passes errors to.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Dict, TypeVar

#: A ``notify(exception, context=...)`` callable, as 0.0.11's classes take one.
Notify = Callable[..., Any]

_Type = TypeVar("_Type", bound=type)

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform
else:

    def dataclass_transform(**_options: Any) -> Callable[[Any], Any]:
        """Tells type checkers that :func:`error_type` makes dataclasses; nothing at run time."""
        return lambda function: function


@dataclass_transform(eq_default=False)
def error_type(text: str = "") -> Callable[[_Type], _Type]:
    """Make an error class a dataclass whose message is ``text`` formatted with its attributes.

    ``text`` is a :meth:`str.format` template; it may name any attribute,
    properties too (``{_where}``). A class that builds its message otherwise
    overrides ``_text()`` instead. ``eq=False, repr=False``: an exception's
    identity, hash and repr.
    """

    def declare(cls: _Type) -> _Type:
        declared: Any = dataclasses.dataclass(eq=False, repr=False)(cls)
        if text:
            declared._template = text
        return declared

    return declare


class _Attributes(Dict[str, Any]):
    """An error's attributes by name, for its message template (properties too)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(vars(error))
        self.error = error

    def __missing__(self, name: str) -> Any:
        return getattr(self.error, name)


class SQSTaskMasterError(Exception):
    """Root of every error type this package defines.

    Its types declared with :func:`error_type` get their message at
    construction (``args`` is ``(message,)``, as for any exception made with
    one) and pickle by their fields, as exceptions do for the standard library's
    own uses (logging handlers, multiprocessing). Nothing of this package sends
    them pickled: a task child reports its error as JSON.
    """

    _template = ""

    def __post_init__(self) -> None:
        super().__init__(self._text())

    def _text(self) -> str:
        """The message: the class's template, formatted with the error's attributes."""
        return self._template.format_map(_Attributes(self))

    def __reduce__(self) -> Any:
        if not dataclasses.is_dataclass(self):
            return super().__reduce__()
        fields = tuple(getattr(self, item.name) for item in dataclasses.fields(self))
        return (type(self), fields, self.__dict__)
