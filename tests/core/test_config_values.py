"""Values that parse as YAML but cannot work: each error names key, value and fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from carepost.core.campaign import load_campaign
from carepost.core.errors import ConfigError
from carepost.core.settings import load_settings
from tests.conftest import REPO

SHIPPED = (REPO / "carepost.yaml").read_text(encoding="utf-8")


def _config(folder: Path, old: str, new: str) -> Path:
    assert old in SHIPPED, f"the shipped carepost.yaml no longer contains {old!r}"
    path = folder / "carepost.yaml"
    path.write_text(SHIPPED.replace(old, new), encoding="utf-8")
    return path


def _line_of(path: Path, text: str) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)


@pytest.mark.parametrize(("old", "new", "key", "expected"), [
    ("port: 587", "port: 99999", "smtp.port",
     "99999 is not a TCP port; expected 1-65535"),
    ("port: 587", "port: 0", "smtp.port", "0 is not a TCP port"),
    ("max_connections: 4", "max_connections: 4\n  timeout_seconds: -5",
     "smtp.timeout_seconds", "-5.0 is not a positive number of seconds"),
    ("max_connections: 4", "max_connections: 4\n  timeout_seconds: 0",
     "smtp.timeout_seconds", "0.0 is not a positive number of seconds"),
    ("max_connections: 4", "max_connections: 4\n  connect_timeout_seconds: .inf",
     "smtp.connect_timeout_seconds", "inf is not a positive number of seconds"),
    ("timezone: America/Chicago", "timezone: America/Chicgo", "practice.timezone",
     "unknown IANA time zone 'America/Chicgo'; use a name such as"),
    ("base_url: https://links.prairie-health.example.test",
     "base_url: http://links.prairie-health.example.test", "tracking.base_url",
     "'http://links.prairie-health.example.test' is not an https URL; change it"),
    ("base_url: https://links.prairie-health.example.test",
     "base_url: https://", "tracking.base_url", "'https://' has no host name"),
    ("address: care@prairie-health.example.test", "address: care.prairie-health",
     "sender.address", "'care.prairie-health' is not a valid email address"),
    ("address: care@prairie-health.example.test", "address: care@clinic.test",
     "sender.address", "'care@clinic.test' is not a valid email address: The "
     "part after the @-sign is a special-use or reserved name"),
    ("address: care@prairie-health.example.test", "address: Care <care@x.org>",
     "sender.address", "'Care <care@x.org>' is not a valid email address"),
    ("care@prairie-health.example.test\n  name: Prairie Family Health",
     'care@prairie-health.example.test\n  name: "Prairie\\r\\nBcc: all@x.test"',
     "sender.name", "contains the control character U+000D"),
])
def test_invalid_setting_named(tmp_path: Path, old: str, new: str, key: str,
                               expected: str) -> None:
    path = _config(tmp_path, old, new)
    line = _line_of(path, new.splitlines()[-1])

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    message = str(caught.value)
    assert f"{path}:{line}:" in message
    assert f": {key}: {expected}" in message


@pytest.mark.parametrize(("old", "new"), [
    ("base_url: https://links.prairie-health.example.test",
     "base_url: http://127.0.0.1:8400"),
    ("base_url: https://links.prairie-health.example.test",
     "base_url: http://[::1]:8400"),
    ("address: care@prairie-health.example.test", "address: care@example.test"),
    ("address: care@prairie-health.example.test", "address: care@clinic.example.org"),
    ("port: 587", "port: 465"),
    ("timezone: America/Chicago", "timezone: UTC"),
])
def test_valid_setting_accepted(tmp_path: Path, old: str, new: str) -> None:
    load_settings(_config(tmp_path, old, new))


def test_generic_error_shows_found(tmp_path: Path) -> None:
    path = _config(tmp_path, "tls: starttls", "tls: none")

    with pytest.raises(ConfigError, match=re.escape(
            "smtp.tls: Input should be 'starttls' or 'implicit' (found 'none')")):
        load_settings(path)


def test_every_problem_listed(tmp_path: Path) -> None:
    text = SHIPPED.replace("port: 587", "port: 70000").replace(
        "timezone: America/Chicago", "timezone: Mars/Olympus")
    path = tmp_path / "carepost.yaml"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    message = str(caught.value)
    assert "smtp.port: 70000" in message
    assert "practice.timezone: unknown IANA time zone 'Mars/Olympus'" in message


def _campaign(folder: Path, **changes: str) -> Path:
    fields = {"segment": "diabetes_prediabetes_adults",
              "template": "diabetes_education", "purpose": "marketing",
              "cron": "'0 9 * * 1'", **changes}
    path = folder / "education.yaml"
    path.write_text(
        f"segment: {fields['segment']}\n"
        f"template: {fields['template']}\n"
        f"purpose: {fields['purpose']}\n"
        "schedule:\n"
        f"  cron: {fields['cron']}\n"
        "  timezone: America/Chicago\n",
        encoding="utf-8")
    return path


@pytest.mark.parametrize("cron", [
    "'0 25 * * *'", "'61 9 * * 1'", "'0 9 * *'", "'0 9 * * 8'", "'H 9 * * 1'",
    "'every monday'",
])
def test_invalid_cron_named(tmp_path: Path, cron: str) -> None:
    path = _campaign(tmp_path, cron=cron)

    with pytest.raises(ConfigError) as caught:
        load_campaign(path)

    message = str(caught.value)
    assert f"{path}:5:9: schedule.cron: {cron} is not a valid cron expression" in message
    assert "hour (0-23)" in message
    assert "for example '0 9 * * 1'" in message


@pytest.mark.parametrize("cron", ["'0 9 1 * *'", "'*/15 8-17 * * 1-5'", "'@daily'"])
def test_valid_cron_accepted(tmp_path: Path, cron: str) -> None:
    campaign = load_campaign(_campaign(tmp_path, cron=cron))

    assert campaign.schedule is not None
    assert campaign.schedule.cron == cron.strip("'")


@pytest.mark.parametrize("purpose", ["marketting", "Care", "'1'"])
def test_unknown_purpose_named(tmp_path: Path, purpose: str) -> None:
    path = _campaign(tmp_path, purpose=purpose)

    with pytest.raises(ConfigError) as caught:
        load_campaign(path)

    message = str(caught.value)
    assert f"{path}:3:10: purpose: unknown purpose {purpose.strip(chr(39))!r}" in message
    assert "expected 'marketing'" in message
    assert "or 'care'" in message
