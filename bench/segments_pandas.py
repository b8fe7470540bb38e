"""The three shipped segments written by hand in pandas, for bench/segments.py.

Each function follows the segment's YAML rule and the language's rules.
The run ends at midnight UTC after the run date, deceased profiles are
dropped, and age counts whole years with the 29 February rule. The
conditions are read the usual pandas way, ``json.loads`` per profile,
because the export stores them as a JSON text column.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

DIABETES_CODES = {"44054006", "15777000"}
SNOMED = "http://snomed.info/sct"
STAGES = ("new_patient", "re_engagement", "checkup_due", "active_care")


def run_pandas(
    profiles_path: Path, events_path: Path, as_of: date, rounds: int
) -> dict[str, Any]:
    """Read both files, then time each segment; return seconds and counts."""
    started = time.perf_counter()
    profiles = pd.read_parquet(
        profiles_path,
        columns=[
            "profile_id",
            "birth_date",
            "deceased_at",
            "consent_marketing",
            "traits",
        ],
    )
    events = pd.read_parquet(
        events_path, columns=["profile_id", "type", "occurred_at", "properties"]
    )
    read_seconds = round(time.perf_counter() - started, 3)
    run_end = pd.Timestamp(as_of + timedelta(days=1), tz="UTC")

    results: dict[str, Any] = {}
    timed: list[tuple[str, Callable[[], Any]]] = [
        (
            "diabetes_prediabetes_adults",
            lambda: diabetes_adults(profiles, as_of, run_end),
        ),
        ("missed_appointment", lambda: missed_appointment(profiles, events, run_end)),
    ]
    for name, work in timed:
        seconds, ids = _best(rounds, work)
        results[name] = {"seconds": seconds, "selected": len(ids)}

    seconds, stages = _best(rounds, lambda: lifecycle(profiles, events, run_end))
    results["patient_lifecycle"] = {
        "seconds": seconds,
        "selected": int(stages.notna().sum()),
    }
    for stage in STAGES:
        results[f"patient_lifecycle/{stage}"] = {
            "seconds": seconds,
            "selected": int((stages == stage).sum()),
        }
    return {"read_seconds": read_seconds, "segments": results}


def _best(rounds: int, work: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(rounds):
        started = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - started)
    return round(best, 3), result


def alive(profiles: pd.DataFrame, run_end: pd.Timestamp) -> pd.Series:
    deceased = profiles["deceased_at"]
    return deceased.isna() | (deceased >= run_end)


def ages(birth_dates: pd.Series, as_of: date) -> pd.Series:
    born = pd.to_datetime(birth_dates)
    before_birthday = (born.dt.month * 100 + born.dt.day) > (
        as_of.month * 100 + as_of.day
    )
    return as_of.year - born.dt.year - before_birthday.astype("int64")


def has_diabetes(traits: str | None) -> bool:
    if not traits:
        return False
    conditions = json.loads(traits).get("conditions")
    if not isinstance(conditions, list):
        return False
    return any(
        isinstance(item, dict)
        and item.get("system") == SNOMED
        and item.get("code") in DIABETES_CODES
        for item in conditions
    )


def diabetes_adults(
    profiles: pd.DataFrame, as_of: date, run_end: pd.Timestamp
) -> list[str]:
    keep = alive(profiles, run_end)
    keep &= ages(profiles["birth_date"], as_of) >= 18
    keep &= profiles["consent_marketing"].fillna(False).astype(bool)
    candidates = profiles[keep]
    matched = candidates["traits"].map(has_diabetes)
    return sorted(candidates.loc[matched, "profile_id"])


def missed_appointment(
    profiles: pd.DataFrame, events: pd.DataFrame, run_end: pd.Timestamp
) -> list[str]:
    """Select profiles with a no-show in the last 14 days and no booking after it."""
    before = events[events["occurred_at"] < run_end]
    no_shows = before[
        (before["type"] == "appointment_no_show")
        & (before["occurred_at"] >= run_end - pd.Timedelta(days=14))
    ]
    latest_no_show = no_shows.groupby("profile_id")["occurred_at"].max()
    booked = before[before["type"] == "appointment_booked"]
    latest_booking = booked.groupby("profile_id")["occurred_at"].max()
    joined = latest_no_show.to_frame("no_show").join(latest_booking.rename("booked"))
    matched = joined[joined["booked"].isna() | (joined["booked"] <= joined["no_show"])]
    living = profiles.loc[alive(profiles, run_end), "profile_id"]
    return sorted(set(matched.index) & set(living))


def lifecycle(
    profiles: pd.DataFrame, events: pd.DataFrame, run_end: pd.Timestamp
) -> pd.Series:
    """Return each living profile's first matching stage (or NaN)."""
    encounters = events[
        (events["type"] == "encounter") & (events["occurred_at"] < run_end)
    ]
    wellness = encounters[
        encounters["properties"].str.contains('"class":"wellness"', regex=False)
    ]
    by_profile = encounters.groupby("profile_id")["occurred_at"]
    facts = pd.DataFrame({"first": by_profile.min(), "last": by_profile.max()})
    facts["wellness"] = wellness.groupby("profile_id")["occurred_at"].max()
    living = profiles.loc[alive(profiles, run_end), "profile_id"]
    facts = facts[facts.index.isin(living)]

    days_90 = run_end - pd.Timedelta(days=90)
    months_18 = run_end - pd.DateOffset(months=18)
    months_12 = run_end - pd.DateOffset(months=12)
    recent_wellness = facts["wellness"].notna() & (facts["wellness"] >= months_12)
    rules = [
        ("new_patient", (facts["last"] >= days_90) & (facts["first"] >= days_90)),
        ("re_engagement", facts["last"] < months_18),
        ("checkup_due", (facts["last"] >= months_18) & ~recent_wellness),
        ("active_care", recent_wellness),
    ]
    stage = pd.Series(pd.NA, index=facts.index, dtype="object")
    for name, rule in reversed(rules):
        stage[rule] = name
    return stage
