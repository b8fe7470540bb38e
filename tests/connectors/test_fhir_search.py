"""FHIR REST search with paging, and SMART backend-services auth."""

from __future__ import annotations

import pytest

from carepost.connectors.fhir import sync_fhir
from carepost.connectors.fhir_auth import FhirAuthError
from carepost.connectors.sync import get_watermark

from .fhir_data import appointment, fhir_spec, shipped_resources

SEARCH_TYPES = ["Patient", "Condition", "Appointment"]


@pytest.fixture
def searchable(fhir_server):
    data = shipped_resources()
    data["Condition"] = data["Condition"][:150]
    for kind in ("Patient", "Condition"):
        for body in data[kind]:
            fhir_server.add(body)
    return data


def search_spec(base: str, **fields):
    return fhir_spec(base, mode="search", types=SEARCH_TYPES, page_size=40, **fields)


async def test_search_follows_next_links(conn, tmp_path, fhir_server, searchable) -> None:
    fhir_server.behaviour.include_patients_in_search = True

    summary = await sync_fhir(conn, "ehr", search_spec(fhir_server.base), tmp_path)

    pages = fhir_server.calls_to("/fhir/")
    conditions = len(searchable["Condition"])
    assert summary.profiles == len(searchable["Patient"])
    assert summary.events == conditions
    assert len([call for call in pages if call.path == "/fhir/"]) == -(-conditions // 40) - 1
    first = fhir_server.calls_to("/fhir/Condition")[0]
    assert first.query == {"_count": "40"}
    ids = [row[0] for row in conn.execute("SELECT profile_id FROM profiles").fetchall()]
    assert "included-only" not in ids


async def test_expired_paging_restarts_search(conn, tmp_path, fhir_server, searchable) -> None:
    fhir_server.behaviour.expire_first_paging_context = True

    summary = await sync_fhir(conn, "ehr", search_spec(fhir_server.base), tmp_path)

    assert len(fhir_server.calls_to("/fhir/Condition")) == 2  # the restart
    stored = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    assert stored == len(searchable["Condition"])
    assert summary.quarantined == 0


async def test_search_rerun_filters_last_updated(conn, tmp_path, fhir_server, searchable) -> None:
    await sync_fhir(conn, "ehr", search_spec(fhir_server.base), tmp_path)
    mark = get_watermark(conn, "ehr")
    patient = searchable["Patient"][0]["id"]
    fhir_server.add(appointment("apt-9", patient, "noshow"), updated="2999-01-01T00:00:00Z")

    summary = await sync_fhir(conn, "ehr", search_spec(fhir_server.base), tmp_path)

    assert fhir_server.calls_to("/fhir/Appointment")[-1].query["_lastUpdated"] == f"gt{mark}"
    assert summary.profiles == 0
    assert summary.events == 1
    kind = conn.execute("SELECT type FROM events WHERE event_id LIKE 'Appointment/%'")
    assert kind.fetchall() == [("appointment_no_show",)]


async def test_wrong_key_is_rejected(conn, tmp_path, fhir_server, monkeypatch) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode()
    monkeypatch.setenv("CAREPOST_TEST_FHIR_KEY", pem)

    with pytest.raises(FhirAuthError, match="token endpoint returned 401 \\(invalid_client\\)"):
        await sync_fhir(conn, "ehr", search_spec(fhir_server.base), tmp_path)
    assert get_watermark(conn, "ehr") is None


async def test_expired_token_is_renewed(conn, tmp_path, fhir_server, searchable) -> None:
    await sync_fhir(conn, "ehr", search_spec(fhir_server.base), tmp_path)
    fhir_server.tokens.clear()  # the server forgets every token it issued

    summary = await sync_fhir(conn, "ehr", search_spec(fhir_server.base), tmp_path)

    assert len(fhir_server.calls_to("/auth/token")) == 2
    assert summary.watermark is not None


def test_unset_key_variable_names_it(tmp_path, monkeypatch) -> None:
    from carepost.connectors.fhir_auth import SmartTokenProvider
    from carepost.core.errors import ConfigError

    spec = search_spec("http://127.0.0.1:9")
    monkeypatch.delenv("CAREPOST_TEST_FHIR_KEY", raising=False)

    with pytest.raises(ConfigError, match="CAREPOST_TEST_FHIR_KEY is not set"):
        SmartTokenProvider(spec.auth, tmp_path)


@pytest.mark.parametrize("url", [
    "http://fhir.example.org/r4",
    "https://user:secret@fhir.example.org/r4",
])
def test_cleartext_or_credential_urls_are_rejected(url) -> None:
    from pydantic import ValidationError

    from carepost.core.sources import FhirSource

    with pytest.raises(ValidationError):
        FhirSource(base_url=url)
