"""Project settings and campaign specs."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from carepost.core.campaign import load_campaign, load_campaigns
from carepost.core.errors import ConfigError
from carepost.core.phi import PHI, RedactingFilter
from carepost.core.settings import load_settings
from tests.conftest import REPO


def test_shipped_configuration_loads() -> None:
    settings = load_settings(REPO / "carepost.yaml")
    assert settings.smtp.tls == "starttls"
    assert settings.root == REPO


def test_unknown_key_named(tmp_path: Path) -> None:
    text = (REPO / "carepost.yaml").read_text().replace("smtp:\n", "smtp:\n  tsl: none\n")
    config = tmp_path / "carepost.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=r"smtp\.tsl"):
        load_settings(config)


def test_plaintext_mode_rejected(tmp_path: Path) -> None:
    text = (REPO / "carepost.yaml").read_text().replace("tls: starttls", "tls: none")
    config = tmp_path / "carepost.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=r"smtp\.tls"):
        load_settings(config)


def test_generated_secret_is_private(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("CAREPOST_TRACKING_SECRET", raising=False)
    text = (REPO / "carepost.yaml").read_text()
    config = tmp_path / "carepost.yaml"
    config.write_text(text + f"\nroot: {REPO}\n".replace("state_dir", "x"))
    settings = load_settings(config).model_copy(update={"state_dir": str(tmp_path / "s")})

    first = settings.tracking_secret
    assert first == settings.tracking_secret
    key_file = tmp_path / "s" / "carepost_tracking_secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_shipped_campaigns_load() -> None:
    campaigns = load_campaigns(REPO / "campaigns")
    assert set(campaigns) == {"checkup_reminder", "diabetes_education",
                              "missed_appointment", "missed_appointment_followup",
                              "refill_reminder"}


def test_campaign_name_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "spring_push.yaml"
    path.write_text("name: other\nsegment: s\ntemplate: t\npurpose: care\n")
    with pytest.raises(ConfigError, match="differs from the file name"):
        load_campaign(path)


def test_campaign_bad_timezone(tmp_path: Path) -> None:
    path = tmp_path / "weekly.yaml"
    path.write_text("segment: s\ntemplate: t\npurpose: care\n"
                    "schedule: {cron: '0 9 * * 1', timezone: America/Chicgo}\n")
    with pytest.raises(ConfigError, match="America/Chicgo"):
        load_campaign(path)


def test_phi_is_masked_everywhere() -> None:
    value = PHI("Avery")
    assert str(value) == "[PHI]"
    assert repr(value) == "[PHI]"
    assert f"{value}" == "[PHI]"
    assert value.reveal() == "Avery"
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(value)


def test_redacting_filter_masks_addresses() -> None:
    import logging

    record = logging.LogRecord("x", logging.INFO, __file__, 1,
                               "to %s about %s", ("sam@example.test", "Zqx"), None)
    RedactingFilter(markers=("Zqx",)).filter(record)
    assert record.getMessage() == "to [PHI] about [PHI]"


def test_state_folder_is_private(tmp_path: Path) -> None:
    settings = load_settings(REPO / "carepost.yaml").model_copy(
        update={"state_dir": str(tmp_path / "state")})
    (tmp_path / "state").mkdir(mode=0o755)
    (tmp_path / "state").chmod(0o755)

    path = settings.state_path

    assert stat.S_IMODE(path.stat().st_mode) == 0o700
