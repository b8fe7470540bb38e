"""FHIR Bulk Data export against a local server serving the shipped sample.

The shipped patients have no e-mail address; fhir_data attaches
``<id>@example.test`` to each one before the server serves them.
"""

from __future__ import annotations

import json
from collections import Counter
import pytest

from carepost.connectors.fhir import sync_fhir
from carepost.connectors.fhir_http import FhirError
from carepost.connectors.sync import get_watermark

from .fhir_data import (
    appointment,
    dispense,
    fhir_spec,
    first_patient_with_active_request,
    shipped_resources,
)

WELLNESS_TYPES = {"162673000", "410620009"}


# Protocol tests serve the first rows of each shipped type; the two mapping
# tests serve all of them.
SMALL_SAMPLE_ROWS = 60


def serve(server, data: dict[str, list[dict]]) -> dict[str, list[dict]]:
    for resources in data.values():
        for body in resources:
            server.add(body)
    server.behaviour.files_per_type = {"Encounter": 3, "MedicationRequest": 2}
    return data


@pytest.fixture
def full_sample(fhir_server):
    return serve(fhir_server, shipped_resources())


@pytest.fixture
def sample(fhir_server):
    data = shipped_resources()
    small = {kind: rows if kind == "Patient" else rows[:SMALL_SAMPLE_ROWS]
             for kind, rows in data.items()}
    return serve(fhir_server, small)


def expected_classes(encounters: list[dict]) -> Counter:
    classes = Counter()
    for body in encounters:
        code = body["class"]["code"]
        type_code = body["type"][0]["coding"][0]["code"]
        if code == "AMB":
            classes["wellness" if type_code in WELLNESS_TYPES else "ambulatory"] += 1
        else:
            classes[{"IMP": "inpatient", "EMER": "emergency", "HH": "home",
                     "VR": "virtual"}[code]] += 1
    return classes


def active_conditions(conditions: list[dict]) -> Counter:
    counts = Counter()
    for body in conditions:
        if body["clinicalStatus"]["coding"][0]["code"] == "active":
            counts[body["subject"]["reference"].split("/")[1]] += 1
    return counts


async def test_export_loads_shipped_sample(conn, tmp_path, fhir_server, full_sample) -> None:
    sample = full_sample
    summary = await sync_fhir(conn, "ehr", fhir_spec(fhir_server.base), tmp_path)

    assert summary.profiles == len(sample["Patient"])
    assert summary.quarantined == 0
    assert summary.watermark == fhir_server.transaction_time
    assert get_watermark(conn, "ehr") == fhir_server.transaction_time
    emails = dict(conn.execute("SELECT profile_id, email FROM profiles").fetchall())
    assert emails == {body["id"]: f"{body['id']}@example.test" for body in sample["Patient"]}
    deceased = conn.execute("SELECT count(*) FROM profiles WHERE deceased_at IS NOT NULL")
    assert deceased.fetchone()[0] == sum(1 for p in sample["Patient"] if "deceasedDateTime" in p)
    types = dict(conn.execute("SELECT type, count(*) FROM events GROUP BY type").fetchall())
    assert types == {
        "encounter": len(sample["Encounter"]),
        "condition_diagnosed": len(sample["Condition"]),
        "prescription_written": len(sample["MedicationRequest"]),
    }
    classes = conn.execute(
        "SELECT properties ->> '$.class', count(*) FROM events WHERE type = 'encounter' GROUP BY 1"
    ).fetchall()
    assert dict(classes) == dict(expected_classes(sample["Encounter"]))


async def test_export_builds_condition_traits(conn, tmp_path, fhir_server,
                                             full_sample) -> None:
    sample = full_sample
    await sync_fhir(conn, "ehr", fhir_spec(fhir_server.base), tmp_path)

    rows = conn.execute(
        "SELECT profile_id, json_array_length(traits -> '$.conditions') FROM profiles"
    ).fetchall()
    expected = active_conditions(sample["Condition"])
    assert {pid: count for pid, count in rows if count} == dict(expected)
    item = conn.execute(
        "SELECT traits -> '$.conditions[0]' FROM profiles "
        "WHERE json_array_length(traits -> '$.conditions') > 0 LIMIT 1"
    ).fetchone()[0]
    assert set(json.loads(item)) == {"system", "code", "display", "onset"}


async def test_export_protocol_shapes(conn, tmp_path, fhir_server, sample) -> None:
    await sync_fhir(conn, "ehr", fhir_spec(fhir_server.base), tmp_path)

    kick_off = fhir_server.calls_to("/fhir/Group/all/$export")[0]
    polls = fhir_server.calls_to("/fhir/status/")
    downloads = fhir_server.calls_to("/fhir/files/")
    assert kick_off.headers["prefer"] == "respond-async"
    assert kick_off.headers["accept"] == "application/fhir+json"
    assert "_since" not in kick_off.query
    assert set(kick_off.query["_type"].split(",")) >= {"Patient", "Appointment", "Consent"}
    assert len(polls) == fhir_server.behaviour.polls_before_ready + 1
    assert len(downloads) == 1 + 1 + 3 + 2  # Patient, Condition, 3 Encounter, 2 requests
    assert all(call.headers["authorization"].startswith("Bearer ") for call in downloads)
    assert all(call.headers["accept"] == "application/fhir+ndjson" for call in downloads)
    assert len(fhir_server.calls_to("/auth/token")) == 1  # cached for every request


async def test_poll_honours_retry_after_and_503(conn, tmp_path, fhir_server, sample) -> None:
    fhir_server.behaviour.throttle_first_poll_seconds = 1
    fhir_server.behaviour.unavailable_on_poll = 3

    summary = await sync_fhir(conn, "ehr", fhir_spec(fhir_server.base), tmp_path)

    polls = fhir_server.calls_to("/fhir/status/")
    assert polls[0].status == 429
    assert polls[1].at - polls[0].at >= 1.0
    assert [call.status for call in polls].count(503) == 1
    assert summary.profiles == len(sample["Patient"])


async def test_slow_download_times_out_and_retries(conn, tmp_path, fhir_server, sample) -> None:
    fhir_server.behaviour.slow_first_download = {"Patient_1.ndjson": 1.0}

    summary = await sync_fhir(
        conn, "ehr", fhir_spec(fhir_server.base, timeout_seconds=0.5), tmp_path)

    assert fhir_server.downloads["Patient_1.ndjson"] == 2
    assert summary.profiles == len(sample["Patient"])


async def test_rerun_asks_since_transaction_time(conn, tmp_path, fhir_server, sample) -> None:
    patient = sample["Patient"][0]["id"]
    fhir_server.add(appointment("apt-1", patient, "booked", created="2024-02-20T10:00:00Z"))
    await sync_fhir(conn, "ehr", fhir_spec(fhir_server.base), tmp_path)
    first_time = fhir_server.transaction_time
    fhir_server.transaction_time = "2024-03-09T02:00:00Z"
    fhir_server.add(appointment("apt-1", patient, "noshow", created="2024-02-20T10:00:00Z"),
                    updated="2024-03-07T00:00:00Z")

    summary = await sync_fhir(conn, "ehr", fhir_spec(fhir_server.base), tmp_path)

    second = fhir_server.calls_to("/fhir/Group/all/$export")[1]
    assert second.query["_since"] == first_time
    assert summary.profiles == 0
    assert summary.events == 2  # the booked event again, and the no-show
    rows = conn.execute(
        "SELECT event_id, type FROM events WHERE event_id LIKE 'Appointment/%' ORDER BY 1"
    ).fetchall()
    assert rows == [("Appointment/apt-1#appointment_booked", "appointment_booked"),
                    ("Appointment/apt-1#appointment_no_show", "appointment_no_show")]
    assert get_watermark(conn, "ehr") == "2024-03-09T02:00:00Z"


async def test_error_file_is_counted(conn, tmp_path, fhir_server, sample) -> None:
    issue = {"resourceType": "OperationOutcome",
             "issue": [{"severity": "error", "code": "processing",
                        "diagnostics": "Patient/123 could not be exported"}]}
    fhir_server.behaviour.error_lines = [json.dumps(issue), json.dumps(issue)]

    summary = await sync_fhir(conn, "ehr", fhir_spec(fhir_server.base), tmp_path)

    assert summary.source_errors == {"processing": 2}
    assert summary.profiles == len(sample["Patient"])


async def test_deleted_resources_are_removed(conn, tmp_path, fhir_server, sample) -> None:
    await sync_fhir(conn, "ehr", fhir_spec(fhir_server.base), tmp_path)
    gone = sample["Patient"][0]["id"]
    condition = sample["Condition"][0]["id"]
    fhir_server.behaviour.deleted = [f"Patient/{gone}", f"Condition/{condition}"]
    fhir_server.transaction_time = "2024-03-09T02:00:00Z"

    summary = await sync_fhir(conn, "ehr", fhir_spec(fhir_server.base), tmp_path)

    assert summary.deleted_profiles == 1
    assert summary.deleted_events > 1
    left = conn.execute("SELECT count(*) FROM profiles WHERE profile_id = ?", [gone])
    assert left.fetchone()[0] == 0
    orphans = conn.execute("SELECT count(*) FROM events WHERE profile_id = ?", [gone])
    assert orphans.fetchone()[0] == 0
    event = conn.execute("SELECT count(*) FROM events WHERE event_id = ?",
                         [f"Condition/{condition}"])
    assert event.fetchone()[0] == 0


async def test_failure_keeps_committed_files(conn, tmp_path, fhir_server, sample) -> None:
    fhir_server.behaviour.failing_files = {"Encounter_2.ndjson"}

    spec = fhir_spec(fhir_server.base, max_attempts=3, backoff_seconds=0.05)

    with pytest.raises(FhirError, match="failed 3 times"):
        await sync_fhir(conn, "ehr", spec, tmp_path)

    assert conn.execute("SELECT count(*) FROM profiles").fetchone()[0] == len(sample["Patient"])
    loaded = conn.execute("SELECT count(*) FROM events WHERE type = 'encounter'").fetchone()[0]
    assert 0 < loaded < len(sample["Encounter"])
    assert get_watermark(conn, "ehr") is None

    fhir_server.behaviour.failing_files = set()
    summary = await sync_fhir(conn, "ehr", fhir_spec(fhir_server.base), tmp_path)
    total = conn.execute("SELECT count(*) FROM events WHERE type = 'encounter'").fetchone()[0]
    assert total == len(sample["Encounter"])
    assert summary.watermark == fhir_server.transaction_time


async def test_malformed_resources_are_quarantined(conn, tmp_path, fhir_server, sample) -> None:
    patient, request = first_patient_with_active_request()
    broken = dict(sample["Patient"][1], id="broken-birth", birthDate="1980-13-45")
    fhir_server.add(broken)
    fhir_server.add(appointment("apt-orphan", patient, "noshow", participant=[]))
    fhir_server.add(dispense("disp-1", patient, request))

    summary = await sync_fhir(conn, "ehr", fhir_spec(fhir_server.base), tmp_path)

    rows = conn.execute(
        "SELECT source_file, source_row, reason FROM quarantine ORDER BY source_file"
    ).fetchall()
    assert summary.quarantined == 2
    assert rows == [
        ("fhir:ehr:1:Patient_1.ndjson", len(sample["Patient"]) + 1,
         "birth_date: unparsable date"),
        ("fhir:ehr:6:Appointment_1.ndjson", 1, "profile_id: missing"),
    ]
    assert summary.quarantine_reasons == {"birth_date: unparsable date": 1,
                                          "profile_id: missing": 1}
    filled = conn.execute(
        "SELECT properties ->> '$.rx_id' FROM events WHERE type = 'prescription_filled'"
    ).fetchall()
    assert filled == [(request,)]
    assert summary.profiles == len(sample["Patient"])
