"""The names a segment spec may use: traits, event properties and window units.

Every identifier that reaches SQL comes from one of the tables here, so a
spec can never name a column or function that this module does not list.
The profile columns are checked against ``carepost.core.schema`` at import
time, which turns a schema change into an import error instead of a query
that fails at run time.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from enum import StrEnum

from carepost.core.schema import EVENT_TYPES, PROFILE_COLUMNS


class TraitType(StrEnum):
    """Value type of a trait; decides which comparison values are valid."""

    TEXT = "text"
    NUMBER = "number"
    BOOLEAN = "boolean"
    DATE = "date"


# Profile columns a segment may compare. Contact and name columns are left
# out on purpose: selecting patients by name or address is never a
# marketing rule, and keeping them out keeps those values out of specs.
PROFILE_TRAITS: dict[str, TraitType] = {
    "birth_date": TraitType.DATE,
    "sex": TraitType.TEXT,
    "postal_code": TraitType.TEXT,
    "state": TraitType.TEXT,
    "timezone": TraitType.TEXT,
    "language": TraitType.TEXT,
    "deceased_at": TraitType.DATE,
    "consent_marketing": TraitType.BOOLEAN,
    "consent_contact": TraitType.BOOLEAN,
}

# Traits computed from the run date rather than read from one column.
AGE_TRAIT = "age"

# The JSON list of active conditions in ``profiles.traits``; it takes only
# the ``contains`` operator.
CONDITIONS_TRAIT = "conditions"

BUILT_IN_TRAITS: frozenset[str] = frozenset(
    {*PROFILE_TRAITS, AGE_TRAIT, CONDITIONS_TRAIT}
)

# Event properties per type, from the canonical event table. A type that is
# missing here (portal_login, form_submitted) has no documented properties,
# so any property name that matches NAME_PATTERN is accepted for it.
EVENT_PROPERTIES: dict[str, frozenset[str]] = {
    "encounter": frozenset({"class", "code", "display"}),
    "condition_diagnosed": frozenset({"system", "code", "display"}),
    "prescription_written": frozenset({"rx_id", "code", "display"}),
    "prescription_filled": frozenset({"rx_id"}),
    "appointment_booked": frozenset({"appointment_id", "starts_at"}),
    "appointment_attended": frozenset({"appointment_id"}),
    "appointment_no_show": frozenset({"appointment_id"}),
    "appointment_cancelled": frozenset({"appointment_id"}),
}

# A trait or property name must be a plain identifier, because it becomes a
# JSON path such as ``$.rx_id``.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

# Window units and the DuckDB function that turns an amount into an
# interval. Months and years are calendar steps, the others fixed lengths.
WINDOW_UNITS: dict[str, str] = {
    "h": "to_hours",
    "d": "to_days",
    "w": "to_weeks",
    "mo": "to_months",
    "y": "to_years",
}
WINDOW_PATTERN = re.compile(r"^([1-9][0-9]{0,4})(h|d|w|mo|y)$")


def suggest(found: str, choices: Iterable[str]) -> str | None:
    """Return the closest choice to a misspelt name, or None if none is close."""
    names = sorted(choices)
    matches = difflib.get_close_matches(found, names, n=1, cutoff=0.6)
    return matches[0] if matches else None


def properties_for(event_type: str) -> frozenset[str] | None:
    """Return the known properties of an event type, or None if open-ended."""
    return EVENT_PROPERTIES.get(event_type)


def _check_against_schema() -> None:
    unknown_columns = set(PROFILE_TRAITS) - set(PROFILE_COLUMNS)
    unknown_types = set(EVENT_PROPERTIES) - set(EVENT_TYPES)
    if unknown_columns or unknown_types:
        raise ImportError(
            "segments.vocabulary names columns or event types that "
            f"core/schema.py does not define: {sorted(unknown_columns)} "
            f"{sorted(unknown_types)}"
        )


_check_against_schema()
