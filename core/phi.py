"""PHI values that cannot be printed by accident.

``PHI`` wraps one value from a patient profile. ``str``, ``repr``,
``format``, ``json.dumps(..., cls=PHIJSONEncoder)`` (or
``default=json_default``) and pydantic serialization all give a mask, and
pickling raises. Only ``reveal()`` returns the value, and only the
renderer and the SMTP envelope call it.
``RedactingFilter`` is the second net, attached to carepost's and
Prefect's log handlers. It masks anything shaped like an email address
and any registered marker value (tests register marker names to prove
they never reach a log). It covers the message, its arguments, the
values passed with ``extra=`` and the formatted exception text.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Generic, TypeVar

from pydantic_core import core_schema

T = TypeVar("T")

MASK = "[PHI]"
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")


class PHI(Generic[T]):
    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def reveal(self) -> T:
        return self._value

    def __repr__(self) -> str:
        return MASK

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PHI) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:
        # Pickling would carry the value into caches and result storage.
        raise TypeError("PHI values cannot be pickled")

    @classmethod
    def __get_pydantic_core_schema__(cls, _source: Any, _handler: Any
                                     ) -> core_schema.CoreSchema:
        # A model field of type PHI validates only PHI instances and dumps
        # the mask, in both model_dump() and model_dump_json().
        return core_schema.is_instance_schema(
            cls, serialization=core_schema.plain_serializer_function_ser_schema(
                lambda _value: MASK))


def json_default(value: Any) -> Any:
    """Encode PHI as the mask for ``json.dumps(default=...)``; reject others."""
    if isinstance(value, PHI):
        return MASK
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


class PHIJSONEncoder(json.JSONEncoder):
    """The project's JSON encoder: PHI values become the mask."""

    def default(self, o: Any) -> Any:
        if isinstance(o, PHI):
            return MASK
        return super().default(o)


def reveal(value: Any) -> Any:
    """Return the plain value of ``value`` if it is wrapped, else itself."""
    return value.reveal() if isinstance(value, PHI) else value


def mask_text(text: str, extra: tuple[str, ...] = ()) -> str:
    text = _EMAIL.sub(MASK, text)
    for marker in extra:
        if marker:
            text = text.replace(marker, MASK)
    return text


# Attributes every LogRecord has; anything else came in through ``extra=``.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_EXCEPTION_FORMATTER = logging.Formatter()


class RedactingFilter(logging.Filter):
    """Mask email addresses and registered values in every log record."""

    def __init__(self, markers: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.markers = markers

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken %-format must not lose the record
            message = str(record.msg)
        masked = mask_text(message, self.markers)
        if masked != message:
            record.msg, record.args = masked, None
        self._mask_extra(record)
        self._mask_exception(record)
        return True

    def _mask_extra(self, record: logging.LogRecord) -> None:
        for name, value in list(vars(record).items()):
            if name in _RECORD_FIELDS or isinstance(value, (int, float, PHI)):
                continue
            text = value if isinstance(value, str) else repr(value)
            masked = mask_text(text, self.markers)
            if masked != text:
                # A container with a hit is replaced by its masked text.
                setattr(record, name, masked)

    def _mask_exception(self, record: logging.LogRecord) -> None:
        # Formatters reuse ``exc_text`` when it is set, so masking it here
        # keeps an exception message that quotes a value out of the output.
        if record.exc_info and not record.exc_text:
            record.exc_text = _EXCEPTION_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text, self.markers)
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info, self.markers)
