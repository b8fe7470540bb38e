"""Derive the demo's CDP export (data/sample/) from the raw files in data/raw/.

Run from the repository root:

    python scripts/build_sample_data.py

Inputs are the Synthea CSV tables in data/raw/synthea/ (patients,
conditions, encounters, medications) and the medscheduler tables in
data/raw/medscheduler/ (appointments, patients). Outputs are
data/sample/profiles.csv and data/sample/events.parquet in the canonical
shapes of carepost.core.schema. The script reads nothing else and uses no
random numbers: every choice that looks random is a SHA-256 hash of a
source id, so two runs write the same rows. The rules are listed in
data/sample/README.md and stated again where they are applied below.

Synthea produces no e-mail addresses. The addresses in profiles.csv are
attached by this script, on the reserved domain example.test, so no demo
message can reach a real mailbox.
"""

from __future__ import annotations

import hashlib
import re
import json
import sys
from datetime import date
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
RAW = ROOT / "data" / "raw"
SAMPLE = ROOT / "data" / "sample"

# The demo runs as of this date; the medscheduler data was generated with it
# as its reference date, and the segment checks below use it.
REFERENCE_DATE = date(2024, 2, 15)
# Every Synthea patient in the raw export lives in Nebraska, and the
# medscheduler times are wall-clock times of the same practice.
LOCAL_TIMEZONE = "America/Chicago"
EMAIL_DOMAIN = "example.test"
SNOMED = "http://snomed.info/sct"
TYPE_2_DIABETES = "44054006"
PREDIABETES = "15777000"

SPANISH_PERCENT = 10
CONTACT_CONSENT_PERCENT = 95
MARKETING_CONSENT_PERCENT = 70


def hash_percentile(purpose: str, source_id: str) -> int:
    """Map an id to 0..99 by SHA-256, salted with ``purpose``.

    The salt keeps the choices independent, so a patient picked for Spanish
    is no more or less likely to have marketing consent.
    """
    digest = hashlib.sha256(f"{purpose}:{source_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def read_text_csv(path: Path) -> pd.DataFrame:
    # Every column is read as text, so zero-padded ids such as "00087" keep
    # their zeros, and an empty field stays "" instead of becoming NaN.
    return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")


def local_midnight_utc(dates: pd.Series) -> pd.Series:
    """Convert date-only source values to UTC, reading each as local midnight."""
    parsed = pd.to_datetime(dates, format="%Y-%m-%d")
    return parsed.dt.tz_localize(LOCAL_TIMEZONE).dt.tz_convert("UTC")


def to_json_column(records: list[dict]) -> list[str]:
    return [json.dumps(record, ensure_ascii=False, sort_keys=True) for record in records]


# --- profiles -------------------------------------------------------------


def active_conditions(conditions: pd.DataFrame) -> dict[str, list[dict]]:
    """Group the conditions without a STOP date by patient, one entry per code."""
    active = conditions[conditions["STOP"] == ""]
    active = active.sort_values(["PATIENT", "START", "CODE"], kind="stable")
    active = active.drop_duplicates(["PATIENT", "CODE"], keep="first")
    grouped: dict[str, list[dict]] = {}
    for row in active.itertuples(index=False):
        grouped.setdefault(row.PATIENT, []).append({
            "system": SNOMED,
            "code": row.CODE,
            "display": row.DESCRIPTION,
            "onset": row.START,
        })
    return grouped


def synthetic_email(profile_id: str) -> str:
    hex_digits = profile_id.replace("-", "")[:12].lower()
    return f"patient-{hex_digits}@{EMAIL_DOMAIN}"


def without_number_suffix(name: str) -> str:
    """Drop the digits Synthea appends to every name ("Treva754" -> "Treva").

    Synthea adds them to keep generated names unique; a patient would read
    "Hi Treva754" as a bug. Apostrophes and accents are kept.
    """
    return re.sub(r"\d+$", "", name)


def build_profiles(patients: pd.DataFrame, conditions: pd.DataFrame) -> pd.DataFrame:
    ids = patients["Id"]
    conditions_by_patient = active_conditions(conditions)
    deceased_at = pd.Series(pd.NaT, index=patients.index, dtype="datetime64[ns, UTC]")
    has_death = patients["DEATHDATE"] != ""
    deceased_at[has_death] = local_midnight_utc(patients.loc[has_death, "DEATHDATE"])

    profiles = pd.DataFrame({
        "profile_id": ids,
        "email": ids.map(synthetic_email),
        "first_name": patients["FIRST"].map(without_number_suffix),
        "last_name": patients["LAST"].map(without_number_suffix),
        "birth_date": patients["BIRTHDATE"],
        "sex": patients["GENDER"].map({"F": "female", "M": "male"}),
        "postal_code": patients["ZIP"],
        "state": patients["STATE"],
        "timezone": LOCAL_TIMEZONE,
        "language": [
            "es" if hash_percentile("language", i) < SPANISH_PERCENT else "en"
            for i in ids
        ],
        "deceased_at": deceased_at.dt.strftime("%Y-%m-%dT%H:%M:%SZ").fillna(""),
        "consent_marketing": [
            hash_percentile("consent_marketing", i) < MARKETING_CONSENT_PERCENT
            for i in ids
        ],
        "consent_contact": [
            hash_percentile("consent_contact", i) < CONTACT_CONSENT_PERCENT
            for i in ids
        ],
        "traits": to_json_column(
            [{"conditions": conditions_by_patient.get(i, [])} for i in ids]
        ),
    })
    if profiles["email"].duplicated().any():
        raise SystemExit(
            "two profile ids share their first 12 hex digits; "
            "lengthen the address prefix in synthetic_email"
        )
    return profiles.sort_values("profile_id", kind="stable").reset_index(drop=True)


# --- events ---------------------------------------------------------------


def make_events(
    event_ids: Sequence[str],
    profile_ids: Sequence[str],
    event_type: str,
    occurred_at: Sequence,
    properties: list[dict],
) -> pd.DataFrame:
    """Build event rows positionally from equal-length sequences."""
    return pd.DataFrame({
        "event_id": np.asarray(event_ids, dtype=object),
        "profile_id": np.asarray(profile_ids, dtype=object),
        "type": event_type,
        "occurred_at": pd.DatetimeIndex(pd.to_datetime(occurred_at, utc=True)),
        "properties": to_json_column(properties),
    })


def encounter_events(encounters: pd.DataFrame) -> pd.DataFrame:
    properties = [
        {"class": row.ENCOUNTERCLASS, "code": row.CODE, "display": row.DESCRIPTION}
        for row in encounters.itertuples(index=False)
    ]
    return make_events(
        "enc-" + encounters["Id"],
        encounters["PATIENT"],
        "encounter",
        encounters["START"],
        properties,
    )


def natural_key_ids(table: pd.DataFrame, columns: list[str], prefix: str) -> pd.Series:
    """Derive stable ids for rows that have no id column in Synthea.

    The id hashes the row's natural key plus its occurrence number among
    rows with the same key, in file order, because medications.csv repeats
    a few (patient, encounter, code, start) keys for separate prescriptions.
    """
    key = table[columns].agg("|".join, axis=1)
    occurrence = key.groupby(key).cumcount().astype(str)
    return prefix + (key + "|" + occurrence).map(short_hash)


def condition_events(conditions: pd.DataFrame) -> pd.DataFrame:
    properties = [
        {"system": SNOMED, "code": row.CODE, "display": row.DESCRIPTION}
        for row in conditions.itertuples(index=False)
    ]
    return make_events(
        natural_key_ids(conditions, ["PATIENT", "ENCOUNTER", "CODE", "START"], "cond-"),
        conditions["PATIENT"],
        "condition_diagnosed",
        local_midnight_utc(conditions["START"]),
        properties,
    )


def prescription_ids(medications: pd.DataFrame) -> pd.Series:
    return natural_key_ids(medications, ["PATIENT", "ENCOUNTER", "CODE", "START"], "rx-")


def prescription_written_events(medications: pd.DataFrame, rx_ids: pd.Series) -> pd.DataFrame:
    properties = [
        {"rx_id": rx_id, "code": code, "display": display}
        for rx_id, code, display in zip(
            rx_ids, medications["CODE"], medications["DESCRIPTION"], strict=True
        )
    ]
    return make_events(
        rx_ids.str.replace("rx-", "written-", n=1),
        medications["PATIENT"],
        "prescription_written",
        medications["START"],
        properties,
    )


def prescription_filled_events(
    medications: pd.DataFrame, rx_ids: pd.Series, export_end: pd.Timestamp
) -> pd.DataFrame:
    """Expand Synthea's DISPENSES count into one event per fill.

    Synthea gives how many times a prescription was dispensed, not when.
    Fill k (k = 0 .. DISPENSES-1) is placed at START + k * (END - START) /
    DISPENSES, where END is STOP, or the end of the export (the latest
    encounter start) for a prescription that is still active. So the first
    fill is on the day of writing and no fill falls after STOP or after the
    export was taken. A STOP that is not after START puts every fill at START.
    """
    starts = pd.to_datetime(medications["START"], utc=True)
    stops = pd.to_datetime(medications["STOP"].replace("", None), utc=True)
    ends = stops.fillna(export_end)
    counts = medications["DISPENSES"].astype(int).to_numpy()
    spans = (ends - starts).clip(lower=pd.Timedelta(0))
    steps = spans / counts

    rows = np.repeat(np.arange(len(medications)), counts)
    fill_index = np.concatenate([np.arange(n) for n in counts])
    # Naive UTC datetime64 values, because numpy has no time-zone-aware dtype.
    naive_starts = starts.dt.tz_convert(None).to_numpy()
    occurred_at = naive_starts[rows] + steps.to_numpy()[rows] * fill_index
    fill_rx_ids = rx_ids.to_numpy()[rows]
    event_ids = [
        f"fill-{rx[3:]}-{k + 1}" for rx, k in zip(fill_rx_ids, fill_index, strict=True)
    ]
    return make_events(
        event_ids,
        medications["PATIENT"].to_numpy()[rows],
        "prescription_filled",
        occurred_at,
        [{"rx_id": rx} for rx in fill_rx_ids],
    )


# --- appointments ---------------------------------------------------------


def link_appointment_patients(
    synthea_patients: pd.DataFrame, scheduler_patients: pd.DataFrame
) -> dict[str, str]:
    """Give each living Synthea patient the appointments of a few medscheduler ones.

    The two generators share no patient ids. The medscheduler patients
    sorted by SHA-256("link:" + patient_id) are dealt in turn to the living
    Synthea patients sorted by Id, ``SCHEDULER_PATIENTS_PER_PROFILE`` each,
    so every profile gets several appointments in the two simulated months
    (one simulated patient each left only 7 no-shows among 100 profiles).
    A deceased Synthea patient gets no appointments, because every
    appointment is in 2024. Returns medscheduler patient_id -> Synthea Id.
    """
    living = sorted(synthea_patients.loc[synthea_patients["DEATHDATE"] == "", "Id"])
    chosen = sorted(
        scheduler_patients["patient_id"],
        key=lambda pid: hashlib.sha256(f"link:{pid}".encode()).hexdigest(),
    )[: len(living) * SCHEDULER_PATIENTS_PER_PROFILE]
    return {pid: living[index % len(living)] for index, pid in enumerate(chosen)}


SCHEDULER_PATIENTS_PER_PROFILE = 3

# Outcome event type and event id suffix per medscheduler status. Statuses
# "scheduled" (after the reference date) and "unknown" get only the
# appointment_booked event.
APPOINTMENT_OUTCOMES = {
    "attended": ("appointment_attended", "attended"),
    "did not attend": ("appointment_no_show", "no-show"),
    "cancelled": ("appointment_cancelled", "cancelled"),
}


def appointment_events(appointments: pd.DataFrame, links: dict[str, str]) -> pd.DataFrame:
    """Turn linked medscheduler appointments into booked and outcome events.

    Times are local wall-clock times of the practice. The start is
    appointment_date + appointment_time, and a booking (a date only) is
    placed at local midnight of scheduling_date.
    """
    linked = appointments[appointments["patient_id"].isin(links)].copy()
    linked["profile_id"] = linked["patient_id"].map(links)
    starts = (
        pd.to_datetime(linked["appointment_date"] + " " + linked["appointment_time"])
        .dt.tz_localize(LOCAL_TIMEZONE)
        .dt.tz_convert("UTC")
    )
    starts_text = starts.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    booked = make_events(
        "appt-" + linked["appointment_id"] + "-booked",
        linked["profile_id"],
        "appointment_booked",
        local_midnight_utc(linked["scheduling_date"]),
        [
            {"appointment_id": a, "starts_at": s}
            for a, s in zip(linked["appointment_id"], starts_text, strict=True)
        ],
    )
    frames = [booked]
    for status, (event_type, suffix) in APPOINTMENT_OUTCOMES.items():
        mask = linked["status"] == status
        frames.append(make_events(
            "appt-" + linked.loc[mask, "appointment_id"] + "-" + suffix,
            linked.loc[mask, "profile_id"],
            event_type,
            starts[mask],
            [{"appointment_id": a} for a in linked.loc[mask, "appointment_id"]],
        ))
    return pd.concat(frames, ignore_index=True)


# --- checks and output ----------------------------------------------------


def segment_members(profiles: pd.DataFrame, events: pd.DataFrame) -> dict[str, set[str]]:
    """Compute the demo's three segments as of REFERENCE_DATE, deceased included.

    Deceased patients stay in on purpose, because the demo shows the
    send-time check skipping them.
    """
    as_of = pd.Timestamp(REFERENCE_DATE, tz=LOCAL_TIMEZONE).tz_convert("UTC")
    adult_cutoff = REFERENCE_DATE.replace(year=REFERENCE_DATE.year - 18).isoformat()

    def has_diabetes_code(traits: str) -> bool:
        codes = {c["code"] for c in json.loads(traits)["conditions"]}
        return bool(codes & {TYPE_2_DIABETES, PREDIABETES})

    diabetes = profiles[
        (profiles["birth_date"] <= adult_cutoff)
        & profiles["consent_marketing"]
        & profiles["traits"].map(has_diabetes_code)
    ]

    wellness = events[
        (events["type"] == "encounter")
        & events["properties"].str.contains('"class": "wellness"', regex=False)
        & (events["occurred_at"] >= as_of - pd.DateOffset(months=12))
        & (events["occurred_at"] < as_of)
    ]
    checkup_due = set(profiles["profile_id"]) - set(wellness["profile_id"])

    no_shows = events[
        (events["type"] == "appointment_no_show")
        & (events["occurred_at"] >= as_of - pd.Timedelta(days=14))
        & (events["occurred_at"] < as_of)
    ]
    last_no_show = no_shows.groupby("profile_id")["occurred_at"].max()
    bookings = events[events["type"] == "appointment_booked"]
    rebooked = {
        row.profile_id
        for row in bookings.itertuples(index=False)
        if row.profile_id in last_no_show.index
        and row.occurred_at > last_no_show[row.profile_id]
    }
    return {
        "diabetes_or_prediabetes_adults_with_marketing_consent": set(diabetes["profile_id"]),
        "checkup_due": checkup_due,
        "recent_no_show_not_rebooked": set(last_no_show.index) - rebooked,
    }


def check_segments(profiles: pd.DataFrame, events: pd.DataFrame) -> None:
    deceased = set(profiles.loc[profiles["deceased_at"] != "", "profile_id"])
    deceased_in_any = set()
    print(f"segments as of {REFERENCE_DATE} (members, of whom deceased):")
    for name, members in segment_members(profiles, events).items():
        print(f"  {name}: {len(members)}, {len(members & deceased)}")
        if not members - deceased:
            raise SystemExit(
                f"segment {name} has no living member as of {REFERENCE_DATE}; "
                "change the linking or consent rule so the demo has a recipient"
            )
        deceased_in_any |= members & deceased
    if not deceased_in_any:
        raise SystemExit(
            "no deceased patient falls into a segment, so the demo cannot "
            "show the deceased check; change the linking or consent rule"
        )


def write_profiles(profiles: pd.DataFrame, path: Path) -> None:
    text = profiles.copy()
    for column in ("consent_marketing", "consent_contact"):
        text[column] = text[column].map({True: "true", False: "false"})
    text.to_csv(path, index=False, lineterminator="\n", encoding="utf-8")


def write_events(events: pd.DataFrame, path: Path) -> None:
    schema = pa.schema([
        ("event_id", pa.string()),
        ("profile_id", pa.string()),
        ("type", pa.string()),
        ("occurred_at", pa.timestamp("us", tz="UTC")),
        ("properties", pa.string()),
    ])
    table = pa.Table.from_pandas(events, schema=schema, preserve_index=False)
    table = table.replace_schema_metadata(None)  # drop pandas' index metadata
    pq.write_table(table, path, compression="zstd")


def main() -> int:
    synthea = RAW / "synthea"
    scheduler = RAW / "medscheduler"
    patients = read_text_csv(synthea / "patients.csv")
    conditions = read_text_csv(synthea / "conditions.csv")
    encounters = read_text_csv(synthea / "encounters.csv")
    medications = read_text_csv(synthea / "medications.csv")
    appointments = read_text_csv(scheduler / "appointments.csv")
    scheduler_patients = read_text_csv(scheduler / "patients.csv")

    profiles = build_profiles(patients, conditions)
    export_end = pd.to_datetime(encounters["START"], utc=True).max()
    rx_ids = prescription_ids(medications)
    links = link_appointment_patients(patients, scheduler_patients)
    events = pd.concat([
        encounter_events(encounters),
        condition_events(conditions),
        prescription_written_events(medications, rx_ids),
        prescription_filled_events(medications, rx_ids, export_end),
        appointment_events(appointments, links),
    ], ignore_index=True)
    events = events.sort_values(["profile_id", "occurred_at", "event_id"], kind="stable")
    events = events.reset_index(drop=True)
    if events["event_id"].duplicated().any():
        raise SystemExit("derived event ids are not unique; check natural_key_ids")

    SAMPLE.mkdir(parents=True, exist_ok=True)
    write_profiles(profiles, SAMPLE / "profiles.csv")
    write_events(events, SAMPLE / "events.parquet")

    print(f"profiles: {len(profiles)} ({(profiles['deceased_at'] != '').sum()} deceased)")
    print(
        f"  language es: {(profiles['language'] == 'es').sum()}, "
        f"consent_contact: {profiles['consent_contact'].sum()}, "
        f"consent_marketing: {profiles['consent_marketing'].sum()}"
    )
    print(f"events: {len(events)}")
    for event_type, count in events["type"].value_counts().sort_index().items():
        print(f"  {event_type}: {count}")
    check_segments(profiles, events)
    return 0


if __name__ == "__main__":
    sys.exit(main())
