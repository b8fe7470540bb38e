"""PHI values that cannot be printed by accident.

``PHI`` wraps one value from a patient profile. ``str``, ``repr``,
``format`` and JSON encoding all give a mask; only ``reveal()`` returns
the value, and only the renderer and the SMTP envelope call it.
``RedactingFilter`` is the second net: attached to carepost's and
Prefect's loggers, it masks anything shaped like an email address and any
value registered with ``register_marker`` (tests use this to prove that a
marker name never reaches a log).
"""

from __future__ import annotations

import logging
import re
from typing import Any, Generic, TypeVar

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


def reveal(value: Any) -> Any:
    """Return the plain value of ``value`` if it is wrapped, else itself."""
    return value.reveal() if isinstance(value, PHI) else value


def mask_text(text: str, extra: tuple[str, ...] = ()) -> str:
    text = _EMAIL.sub(MASK, text)
    for marker in extra:
        if marker:
            text = text.replace(marker, MASK)
    return text


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
        return True
