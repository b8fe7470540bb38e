"""Attach the PHI redaction filter to every log handler in the process.

A filter on a logger does not see records that propagate from its
children, so the filter goes on the handlers: the root's, Prefect's
console handler and Prefect's API handler (which writes run logs into
Prefect's database). Call it again after anything adds a handler.
"""

from __future__ import annotations

import logging

from carepost.core.phi import RedactingFilter

_FILTER = RedactingFilter()


def install_redaction(markers: tuple[str, ...] = ()) -> RedactingFilter:
    """Add the shared filter to every handler; ``markers`` are masked too."""
    if markers:
        _FILTER.markers = tuple(sorted(set(_FILTER.markers) | set(markers)))
    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
    return _FILTER
