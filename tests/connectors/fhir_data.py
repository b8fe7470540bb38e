"""FHIR test data: the shipped bulk export sample plus a few hand-made resources.

The sample patients (Synthea, via the SMART sample bulk data sets) have
phone numbers but no e-mail address, so ``shipped_resources`` attaches
``<id>@example.test`` to each Patient's ``telecom``. The sample has no
Appointment, MedicationDispense, Observation or Consent for its patients,
so ``extra_resources`` adds some, shaped like the FHIR R4 examples.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from carepost.core.sources import FhirSource, SmartAuth

from .conftest import CLIENT_ID, KEY_ID, PRIVATE_KEY_ENV

REPO = Path(__file__).resolve().parents[2]
FHIR_DATA = REPO / "data" / "fhir"
SHIPPED_TYPES = ("Patient", "Condition", "Encounter", "MedicationRequest")


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def shipped_resources() -> dict[str, list[dict[str, Any]]]:
    """Return the shipped sample by type, each Patient with a test address."""
    data = {kind: read_ndjson(FHIR_DATA / f"{kind}.000.ndjson") for kind in SHIPPED_TYPES}
    for patient in data["Patient"]:
        patient.setdefault("telecom", []).append(
            {"system": "email", "value": f"{patient['id']}@example.test", "use": "home"})
    return data


def first_patient_with_active_request() -> tuple[str, str]:
    """Return (patient id, MedicationRequest id) of an active shipped request."""
    for request in read_ndjson(FHIR_DATA / "MedicationRequest.000.ndjson"):
        if request["status"] == "active":
            return request["subject"]["reference"].split("/")[1], request["id"]
    raise AssertionError("the shipped sample has no active MedicationRequest")


def appointment(appointment_id: str, patient: str, status: str, **fields: Any) -> dict[str, Any]:
    body = {"resourceType": "Appointment", "id": appointment_id, "status": status,
            "start": "2024-03-02T14:00:00Z", "end": "2024-03-02T14:20:00Z",
            "participant": [{"actor": {"reference": f"Patient/{patient}"},
                             "status": "accepted"}]}
    body.update(fields)
    return body


def dispense(dispense_id: str, patient: str, request_id: str) -> dict[str, Any]:
    """A dispense shaped like the SMART sample's MedicationDispense lines."""
    sample = read_ndjson(FHIR_DATA / "MedicationDispense.sample.ndjson")[0]
    sample.update({
        "id": dispense_id,
        "subject": {"reference": f"Patient/{patient}"},
        "authorizingPrescription": [{"reference": f"MedicationRequest/{request_id}"}],
    })
    return sample


def hba1c(observation_id: str, patient: str, value: float, when: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": observation_id, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4",
                                 "display": "Hemoglobin A1c/Hemoglobin.total in Blood"}]},
            "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": "%", "system": "http://unitsofmeasure.org",
                              "code": "%"}}


def consent(consent_id: str, patient: str, purpose: str, kind: str) -> dict[str, Any]:
    return {"resourceType": "Consent", "id": consent_id, "status": "active",
            "scope": {"coding": [{"code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": f"Patient/{patient}"},
            "provision": {"type": kind, "purpose": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                "code": purpose}]}}


def fhir_spec(server_url: str, **fields: Any) -> FhirSource:
    auth = SmartAuth(token_url=f"{server_url}/auth/token", client_id=CLIENT_ID,
                     key_id=KEY_ID, private_key_env=PRIVATE_KEY_ENV)
    values: dict[str, Any] = {"base_url": f"{server_url}/fhir", "group": "all", "auth": auth,
                              "timeout_seconds": 5.0}
    values.update(fields)
    return FhirSource(**values)
