"""FHIR resource mapping and the traits built from conditions and observations."""

from __future__ import annotations

import json

import pytest

from carepost.connectors.fhir_mapping import MappedBatch, map_resource, reference_id
from carepost.connectors.fhir_store import apply_batch, apply_deletions
from carepost.connectors.sync import SyncSummary, transaction
from carepost.core.schema import create_tables

from .fhir_data import appointment, consent, dispense, hba1c

NOW = "2024-03-06T02:00:00Z"


def mapped(*resources: dict) -> MappedBatch:
    batch = MappedBatch()
    for row, resource in enumerate(resources, 1):
        map_resource(resource, row, batch, NOW)
    return batch


def load(conn, *resources: dict, label: str = "fhir:test:1") -> SyncSummary:
    create_tables(conn)
    summary = SyncSummary(source="test", kind="fhir")
    with transaction(conn):
        apply_batch(conn, label, mapped(*resources), summary)
    return summary


@pytest.mark.parametrize("reference, expected", [
    ({"reference": "Patient/p1"}, "p1"),
    ({"reference": "urn:uuid:p2"}, "p2"),
    ({"reference": "https://fhir.example.test/r4/Patient/p3/_history/2"}, "p3"),
    ({"reference": "Group/g1"}, None),
    ({"display": "no reference"}, None),
    (None, None),
])
def test_reference_id_forms(reference, expected) -> None:
    assert reference_id(reference) == expected


@pytest.mark.parametrize("status, expected", [
    ("noshow", ["appointment_booked", "appointment_no_show"]),
    ("fulfilled", ["appointment_booked", "appointment_attended"]),
    ("cancelled", ["appointment_booked", "appointment_cancelled"]),
    ("booked", ["appointment_booked"]),
])
def test_appointment_status_events(status, expected) -> None:
    batch = mapped(appointment("a1", "p1", status, created="2024-02-20T10:00:00Z"))

    assert [event["type"] for event in batch.events] == expected
    assert batch.events[0]["occurred_at"] == "2024-02-20T10:00:00Z"
    assert batch.events[-1]["properties"]["appointment_id"] == "a1"


def test_proposed_appointment_is_unmapped() -> None:
    batch = mapped(appointment("a1", "p1", "proposed"))

    assert batch.events == []
    assert batch.unmapped == 1


@pytest.mark.parametrize("act, type_code, expected", [
    ("AMB", "162673000", "wellness"),
    ("AMB", "410620009", "wellness"),
    ("AMB", "185347001", "ambulatory"),
    ("IMP", "185347001", "inpatient"),
    ("EMER", "50849002", "emergency"),
    ("VR", "390906007", "virtual"),
    ("XYZ", "1", "xyz"),
])
def test_encounter_class_mapping(act, type_code, expected) -> None:
    encounter = {"resourceType": "Encounter", "id": "e1", "status": "finished",
                 "class": {"code": act}, "subject": {"reference": "Patient/p1"},
                 "type": [{"coding": [{"system": "http://snomed.info/sct", "code": type_code}]}],
                 "period": {"start": "2020-01-01T10:00:00Z"}}

    assert mapped(encounter).events[0]["properties"]["class"] == expected


def test_dispense_links_request_and_skips_incomplete() -> None:
    done = dispense("d1", "p1", "rx-5531")
    pending = dict(dispense("d2", "p1", "rx-5531"), status="in-progress")

    batch = mapped(done, pending)

    assert [event["type"] for event in batch.events] == ["prescription_filled"]
    assert batch.events[0]["properties"]["rx_id"] == "rx-5531"
    assert batch.unmapped == 1


def test_deceased_boolean_uses_last_update() -> None:
    patient = {"resourceType": "Patient", "id": "p1", "deceasedBoolean": True,
               "meta": {"lastUpdated": "2023-05-01T00:00:00Z"}, "birthDate": "1950"}

    profile = mapped(patient).profiles[0]

    assert profile["deceased_at"] == "2023-05-01T00:00:00Z"
    assert profile["birth_date"] is None  # a year alone is no date


def test_latest_hba1c_becomes_trait(conn) -> None:
    patient = {"resourceType": "Patient", "id": "p1"}
    load(conn, patient, hba1c("o1", "p1", 7.9, "2023-06-01T09:00:00Z"),
         hba1c("o2", "p1", 6.8, "2024-01-10T09:00:00Z"))
    load(conn, hba1c("o3", "p1", 9.9, "2022-01-01T09:00:00Z"), label="fhir:test:2")

    traits = json.loads(conn.execute("SELECT traits FROM profiles").fetchone()[0])

    assert traits["last_hba1c"] == {"value": 6.8, "unit": "%", "at": "2024-01-10T09:00:00Z"}


def test_consent_sets_purpose_columns(conn) -> None:
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female"}
    load(conn, patient, consent("c1", "p1", "HMARKT", "deny"),
         consent("c2", "p1", "TREAT", "permit"))

    row = conn.execute("SELECT sex, consent_marketing, consent_contact FROM profiles").fetchone()

    assert row == ("female", False, True)


def test_incremental_condition_keeps_others(conn) -> None:
    def condition(cid: str, code: str, status: str) -> dict:
        return {"resourceType": "Condition", "id": cid, "subject": {"reference": "Patient/p1"},
                "clinicalStatus": {"coding": [{"code": status}]},
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": code,
                                     "display": code}]},
                "onsetDateTime": "2020-01-01T00:00:00-05:00"}

    load(conn, {"resourceType": "Patient", "id": "p1"}, condition("c1", "44054006", "active"),
         condition("c2", "38341003", "active"))
    load(conn, condition("c2", "38341003", "resolved"), label="fhir:test:2")
    summary = SyncSummary(source="test", kind="fhir")
    with transaction(conn):
        apply_deletions(conn, ["Condition/c1"], summary)

    traits = json.loads(conn.execute("SELECT traits FROM profiles").fetchone()[0])

    assert summary.deleted_events == 1
    assert traits["conditions"] == []
    load(conn, condition("c3", "15777000", "active"), label="fhir:test:3")
    traits = json.loads(conn.execute("SELECT traits FROM profiles").fetchone()[0])
    assert [item["code"] for item in traits["conditions"]] == ["15777000"]
    assert traits["conditions"][0]["onset"] == "2020-01-01"
