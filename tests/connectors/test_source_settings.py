"""Named sources in carepost.yaml: the legacy shape, kinds and URL rules."""

from __future__ import annotations

import pytest
import yaml

from carepost.core.errors import ConfigError
from carepost.core.settings import load_settings
from carepost.core.sources import FhirSource, FileSource, SegmentSource, read_secret

BASE = {
    "practice": {"name": "Test Practice", "postal_address": "1 Test Street"},
    "sender": {"address": "care@practice.example.test", "name": "Test Practice"},
}


def settings_with(tmp_path, **extra):
    path = tmp_path / "carepost.yaml"
    path.write_text(yaml.safe_dump({**BASE, **extra}), encoding="utf-8")
    return load_settings(path)


def test_legacy_source_is_named_export(tmp_path) -> None:
    settings = settings_with(tmp_path, source={"kind": "files", "profiles": "p.csv",
                                               "events": "e.parquet"})

    sources = settings.named_sources()

    assert list(sources) == ["export"]
    assert sources["export"].profiles == "p.csv"


def test_named_sources_by_kind(tmp_path) -> None:
    settings = settings_with(tmp_path, sources={
        "crm": {"kind": "files", "profiles": "p.csv", "timezone": "America/Chicago"},
        "ehr": {"kind": "fhir", "base_url": "https://fhir.example.test/r4"},
        "cdp": {"kind": "segment", "space_id": "spc_1"},
    })

    sources = settings.named_sources()

    assert isinstance(sources["crm"], FileSource)
    assert isinstance(sources["ehr"], FhirSource)
    assert isinstance(sources["cdp"], SegmentSource)
    assert sources["cdp"].base_url == "https://profiles.segment.com"


def test_legacy_and_named_export_conflict(tmp_path) -> None:
    settings = settings_with(
        tmp_path, source={"profiles": "p.csv", "events": "e.csv"},
        sources={"export": {"kind": "files", "profiles": "q.csv"}})

    with pytest.raises(ConfigError, match="both source: and sources.export are set"):
        settings.named_sources()


@pytest.mark.parametrize("source, fragment", [
    ({"kind": "files", "profiles": "p.csv", "timezone": "Mars/Base"}, "unknown IANA time zone"),
    ({"kind": "fhir", "base_url": "http://fhir.example.test"}, "is not an https URL"),
    ({"kind": "segment", "space_id": "s", "base_url": "https://t:x@profiles.example.test"},
     "must not carry credentials"),
    ({"kind": "ftp", "path": "x"}, "kind"),
])
def test_invalid_source_is_config_error(tmp_path, source, fragment) -> None:
    with pytest.raises(ConfigError, match=fragment):
        settings_with(tmp_path, sources={"bad": source})


def test_loopback_http_is_allowed() -> None:
    assert FhirSource(base_url="http://127.0.0.1:8080/fhir").base_url.startswith("http://")
    assert FhirSource(base_url="http://[::1]:8080/fhir").base_url.startswith("http://")


def test_secret_never_prints(monkeypatch) -> None:
    monkeypatch.setenv("CAREPOST_TEST_SECRET", "s3cret-value")

    secret = read_secret("CAREPOST_TEST_SECRET", "test")

    assert "s3cret-value" not in repr(secret)
    assert "s3cret-value" not in str(secret)
    assert secret.get_secret_value() == "s3cret-value"
