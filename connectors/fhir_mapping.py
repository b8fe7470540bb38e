"""Map FHIR R4 resources to canonical profile and event records.

| resource            | becomes |
|---------------------|---------|
| Patient             | a profile: name (official, else first), birthDate, gender, home address postal code and state, deceased, ``telecom`` e-mail, preferred ``communication`` language |
| Consent             | ``consent_marketing`` (purpose HMARKT) or ``consent_contact`` (purpose TREAT, HPAYMT, CAREMGT): permit is true, deny, inactive or rejected is false |
| Condition           | a ``condition_diagnosed`` event, and an entry of ``traits.conditions`` while active |
| Encounter           | an ``encounter`` event; ``class`` from ``ENCOUNTER_CLASSES`` |
| Appointment         | ``appointment_booked`` at ``created``, and by status ``appointment_no_show``, ``appointment_attended`` or ``appointment_cancelled`` at ``start`` |
| MedicationRequest   | ``prescription_written`` (``rx_id`` is the request id) |
| MedicationDispense  | ``prescription_filled`` when completed (``rx_id`` from ``authorizingPrescription``) |
| Observation         | a trait by LOINC code (``OBSERVATION_TRAITS``), the latest value wins |

Event ids are ``<type>/<id>``, with ``#<event type>`` when one resource
gives several events. Any other resource type, and statuses that record
nothing (a cancelled Encounter, an entered-in-error resource), are counted
as unmapped. Mapping never raises: a missing value is left empty and the
canonical checks quarantine the record with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ENCOUNTER_CLASSES", "MappedBatch", "OBSERVATION_TRAITS", "map_resource", "reference_id"]

Resource = dict[str, Any]

# FHIR R4 Encounter.class uses v3 ActCode; carepost's classes are Synthea's.
# Synthea exports wellness, ambulatory, outpatient and urgent care visits all
# as AMB, so AMB becomes "ambulatory" unless the type is a wellness visit.
ENCOUNTER_CLASSES = {
    "AMB": "ambulatory",
    "IMP": "inpatient",
    "ACUTE": "inpatient",
    "NONAC": "inpatient",
    "EMER": "emergency",
    "HH": "home",
    "VR": "virtual",
    "OBSENC": "outpatient",
    "SS": "outpatient",
    "PRENC": "outpatient",
    "FLD": "field",
}
# SNOMED CT types of wellness visits: general examination, well child visit.
WELLNESS_TYPES = frozenset({"162673000", "410620009"})

OBSERVATION_TRAITS = {"4548-4": "last_hba1c"}
LOINC = "http://loinc.org"

ACTIVE_CONDITION = frozenset({"active", "recurrence", "relapse"})
SKIPPED_STATUSES = frozenset({"entered-in-error", "cancelled", "planned", "draft"})
FINAL_OBSERVATION = frozenset({"final", "amended", "corrected"})
APPOINTMENT_OUTCOMES = {
    "noshow": "appointment_no_show",
    "fulfilled": "appointment_attended",
    "arrived": "appointment_attended",
    "checked-in": "appointment_attended",
    "cancelled": "appointment_cancelled",
}
MARKETING_PURPOSES = frozenset({"HMARKT"})
CONTACT_PURPOSES = frozenset({"TREAT", "HPAYMT", "CAREMGT"})


@dataclass
class MappedBatch:
    """Records of one batch of resources, by destination."""

    profiles: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    conditions: list[dict[str, Any]] = field(default_factory=list)
    observations: list[dict[str, Any]] = field(default_factory=list)
    unmapped: int = 0


def reference_id(reference: Any, resource_type: str = "Patient") -> str | None:
    """Return the id in a reference such as ``Patient/123`` or ``urn:uuid:123``."""
    text = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(text, str) or not text:
        return None
    if text.startswith("urn:uuid:"):
        return text.removeprefix("urn:uuid:")
    parts = text.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == resource_type:
        return parts[-1]
    return None


def _first_coding(concept: Any) -> dict[str, Any]:
    if isinstance(concept, dict):
        codings = concept.get("coding") or []
        if codings and isinstance(codings[0], dict):
            return codings[0]
    return {}


def _codes(concepts: Any) -> set[str]:
    concepts = concepts if isinstance(concepts, list) else [concepts]
    return {
        str(coding.get("code"))
        for concept in concepts
        if isinstance(concept, dict)
        for coding in concept.get("coding") or []
        if isinstance(coding, dict)
    }


def _preferred(items: Any, key: str, value: str) -> dict[str, Any]:
    items = [item for item in items or [] if isinstance(item, dict)]
    for item in items:
        if item.get(key) == value:
            return item
    return items[0] if items else {}


# --- profiles ---------------------------------------------------------------


def _patient(resource: Resource, row: int, batch: MappedBatch, fallback_time: str) -> None:
    name = _preferred(resource.get("name"), "use", "official")
    address = _preferred(resource.get("address"), "use", "home")
    emails = [
        item for item in resource.get("telecom") or []
        if isinstance(item, dict) and item.get("system") == "email"
    ]
    language = _preferred(resource.get("communication"), "preferred", True)
    birth = resource.get("birthDate")
    given = name.get("given") or [None]
    batch.profiles.append({
        "source_row": row,
        "profile_id": resource.get("id"),
        "email": _preferred(emails, "use", "home").get("value"),
        "first_name": given[0],
        "last_name": name.get("family"),
        # A partial date (year or year-month) is allowed in FHIR but is no DATE.
        "birth_date": birth if isinstance(birth, str) and len(birth) == 10 else None,
        "sex": resource.get("gender"),
        "postal_code": address.get("postalCode"),
        "state": address.get("state"),
        "language": _first_coding(language.get("language")).get("code"),
        "deceased_at": _deceased_at(resource, fallback_time),
    })


def _deceased_at(resource: Resource, fallback_time: str) -> str | None:
    if resource.get("deceasedDateTime"):
        return resource["deceasedDateTime"]
    if resource.get("deceasedBoolean") is True:
        # No time of death is given; the send-time check needs a time, so the
        # record's last update (else the sync time) is used instead.
        return (resource.get("meta") or {}).get("lastUpdated") or fallback_time
    return None


def _consent(resource: Resource, row: int, batch: MappedBatch) -> None:
    status = resource.get("status")
    provision = resource.get("provision") or {}
    # Consent.provision.purpose is a list of Coding (not CodeableConcept).
    purposes = {
        str(coding.get("code"))
        for coding in provision.get("purpose") or []
        if isinstance(coding, dict)
    }
    permitted = status == "active" and provision.get("type", "permit") == "permit"
    columns = {}
    if purposes & MARKETING_PURPOSES:
        columns["consent_marketing"] = permitted
    if purposes & CONTACT_PURPOSES:
        columns["consent_contact"] = permitted
    if not columns or status not in ("active", "inactive", "rejected"):
        batch.unmapped += 1
        return
    # NOTE: several Consents of one patient in a batch apply in file order,
    # not by Consent.dateTime.
    batch.profiles.append({
        "source_row": row,
        "profile_id": reference_id(resource.get("patient")),
        **columns,
    })


# --- events -------------------------------------------------------------------


def _event(row: int, event_id: str | None, patient: Any, kind: str,
           occurred_at: Any, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "source_row": row,
        "event_id": event_id,
        "profile_id": reference_id(patient),
        "type": kind,
        "occurred_at": occurred_at,
        "properties": properties,
    }


def _condition(resource: Resource, row: int, batch: MappedBatch) -> None:
    coding = _first_coding(resource.get("code"))
    onset = resource.get("onsetDateTime") or (resource.get("onsetPeriod") or {}).get("start")
    onset = onset or resource.get("recordedDate")
    code = {"system": coding.get("system"), "code": coding.get("code"),
            "display": coding.get("display")}
    rid = resource.get("id")
    batch.events.append(_event(row, rid and f"Condition/{rid}", resource.get("subject"),
                               "condition_diagnosed", onset, code))
    verification = _codes(resource.get("verificationStatus"))
    active = bool(_codes(resource.get("clinicalStatus")) & ACTIVE_CONDITION)
    active = active and not verification & {"refuted", "entered-in-error"}
    batch.conditions.append({
        "condition_id": rid, "profile_id": reference_id(resource.get("subject")),
        "onset": onset[:10] if isinstance(onset, str) else None, "active": active, **code,
    })


def _encounter(resource: Resource, row: int, batch: MappedBatch) -> None:
    if resource.get("status") in SKIPPED_STATUSES:
        batch.unmapped += 1
        return
    act = (resource.get("class") or {}).get("code")
    kind = _first_coding((resource.get("type") or [None])[0])
    label = ENCOUNTER_CLASSES.get(str(act), str(act).lower() if act else None)
    if act == "AMB" and kind.get("code") in WELLNESS_TYPES:
        label = "wellness"
    rid = resource.get("id")
    batch.events.append(_event(
        row, rid and f"Encounter/{rid}", resource.get("subject"), "encounter",
        (resource.get("period") or {}).get("start"),
        {"class": label, "code": kind.get("code"), "display": kind.get("display")},
    ))


def _appointment_patient(resource: Resource) -> dict[str, Any] | None:
    for participant in resource.get("participant") or []:
        actor = participant.get("actor") if isinstance(participant, dict) else None
        if reference_id(actor):
            return actor
    return None


def _appointment(resource: Resource, row: int, batch: MappedBatch) -> None:
    rid, status = resource.get("id"), resource.get("status")
    patient, start = _appointment_patient(resource), resource.get("start")
    base = f"Appointment/{rid}" if rid else None
    recorded = False
    if status == "booked" or resource.get("created"):
        booked_at = resource.get("created") or start
        batch.events.append(_event(
            row, base and f"{base}#appointment_booked", patient, "appointment_booked",
            booked_at, {"appointment_id": rid, "starts_at": start},
        ))
        recorded = True
    outcome = APPOINTMENT_OUTCOMES.get(str(status))
    if outcome:
        batch.events.append(_event(row, base and f"{base}#{outcome}", patient, outcome,
                                   start, {"appointment_id": rid}))
        recorded = True
    if not recorded:
        batch.unmapped += 1


def _medication(resource: Resource) -> dict[str, Any]:
    coding = _first_coding(resource.get("medicationCodeableConcept"))
    if not coding:
        return {"display": (resource.get("medicationReference") or {}).get("display")}
    return {"code": coding.get("code"), "display": coding.get("display")}


def _medication_request(resource: Resource, row: int, batch: MappedBatch) -> None:
    if resource.get("status") in SKIPPED_STATUSES:
        batch.unmapped += 1
        return
    rid = resource.get("id")
    batch.events.append(_event(
        row, rid and f"MedicationRequest/{rid}", resource.get("subject"),
        "prescription_written", resource.get("authoredOn"),
        {"rx_id": rid, "status": resource.get("status"), **_medication(resource)},
    ))


def _medication_dispense(resource: Resource, row: int, batch: MappedBatch) -> None:
    if resource.get("status") != "completed":
        batch.unmapped += 1
        return
    prescriptions = resource.get("authorizingPrescription") or [None]
    rid = resource.get("id")
    batch.events.append(_event(
        row, rid and f"MedicationDispense/{rid}",
        resource.get("subject") or resource.get("patient"), "prescription_filled",
        resource.get("whenHandedOver") or resource.get("whenPrepared"),
        {"rx_id": reference_id(prescriptions[0], "MedicationRequest"), **_medication(resource)},
    ))


def _observation(resource: Resource, row: int, batch: MappedBatch) -> None:
    loinc = {
        coding.get("code")
        for coding in (resource.get("code") or {}).get("coding") or []
        if isinstance(coding, dict) and coding.get("system") == LOINC
    }
    traits = [OBSERVATION_TRAITS[code] for code in loinc if code in OBSERVATION_TRAITS]
    quantity = resource.get("valueQuantity") or {}
    if not traits or resource.get("status") not in FINAL_OBSERVATION or "value" not in quantity:
        batch.unmapped += 1
        return
    batch.observations.append({
        "observation_id": resource.get("id"),
        "profile_id": reference_id(resource.get("subject")),
        "trait": traits[0],
        "value": quantity.get("value"),
        "unit": quantity.get("unit") or quantity.get("code"),
        "effective_at": resource.get("effectiveDateTime") or resource.get("issued"),
    })


_MAPPERS = {
    "Condition": _condition,
    "Encounter": _encounter,
    "Appointment": _appointment,
    "MedicationRequest": _medication_request,
    "MedicationDispense": _medication_dispense,
    "Observation": _observation,
    "Consent": _consent,
}


def map_resource(resource: Resource, row: int, batch: MappedBatch, fallback_time: str) -> None:
    """Append the records of one resource to ``batch``.

    ``fallback_time`` replaces a time of death that the resource lacks.
    """
    kind = resource.get("resourceType")
    if kind == "Patient":
        _patient(resource, row, batch, fallback_time)
    elif kind in _MAPPERS:
        _MAPPERS[kind](resource, row, batch)
    else:
        batch.unmapped += 1
