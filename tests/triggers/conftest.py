"""A throwaway project with a loaded warehouse, a STARTTLS server and a
trigger campaign, for the webhook and behaviour tests.

The shipped export's addresses are on the reserved example.test domain.
The test campaigns send at any hour (the window is open all day) unless a
test sets a window of its own.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from carepost.connectors.files import load_export
from carepost.connectors.local_smtp import LocalTlsSmtpServer
from carepost.core.schema import create_tables
from carepost.core.settings import Settings, load_settings
from tests.conftest import REPO, TEST_STATE
from tests.flows.project import Project, make_project

NO_SHOW_CAMPAIGN: dict[str, Any] = {
    "description": "test no-show follow-up",
    "template": "missed_appointment",
    "purpose": "care",
    "trigger": {"event": "appointment_no_show", "key": "appointment_id",
                "delay": "0m", "time_field": "missed_appointment_at",
                "cancel_if": [{"event": "appointment_booked", "match": "profile"}]},
    "send_window": {"start": "00:00", "end": "00:00"},
}


@dataclass
class TriggerProject:
    project: Project
    smtp: LocalTlsSmtpServer
    settings: Settings
    profile_ids: list[str]

    def write_campaign(self, name: str, spec: dict[str, Any]) -> None:
        path = self.project.root / "campaigns" / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))

    def reload(self) -> Settings:
        self.settings = load_settings(self.project.config)
        return self.settings


def _contactable_profiles(warehouse: Path) -> list[str]:
    with duckdb.connect(str(warehouse)) as conn:
        rows = conn.execute(
            "SELECT profile_id FROM profiles WHERE email IS NOT NULL AND"
            " deceased_at IS NULL AND consent_contact ORDER BY profile_id").fetchall()
    return [row[0] for row in rows]


_LOADED: dict[str, Path] = {}


def _loaded_warehouse() -> Path:
    """Load the shipped export once per session; tests copy the file."""
    if "path" not in _LOADED:
        path = Path(tempfile.mkdtemp(dir=TEST_STATE)) / "warehouse.duckdb"
        with duckdb.connect(str(path)) as conn:
            create_tables(conn)
            load_export(conn, REPO / "data/sample/profiles.csv",
                        REPO / "data/sample/events.parquet")
        _LOADED["path"] = path
    return _LOADED["path"]


def build_project(folder: Path, smtp: LocalTlsSmtpServer) -> TriggerProject:
    """Copy the sample project, point it at ``smtp`` and copy in its warehouse."""
    project = make_project(folder)
    project.set_smtp(host=smtp.host, port=smtp.port, ca_file=str(smtp.ca_file))
    for shipped in (project.root / "campaigns").glob("*.yaml"):
        shipped.unlink()
    settings = load_settings(project.config)
    shutil.copy(_loaded_warehouse(), settings.warehouse_path)
    trigger = TriggerProject(project, smtp, settings,
                             _contactable_profiles(settings.warehouse_path))
    trigger.write_campaign("no_show_followup", NO_SHOW_CAMPAIGN)
    return trigger


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[LocalTlsSmtpServer]:
    with LocalTlsSmtpServer(tmp_path / "mailbox") as server:
        yield server


@pytest.fixture
def trigger_project(tmp_path: Path, smtp_server: LocalTlsSmtpServer
                    ) -> TriggerProject:
    return build_project(tmp_path / "project", smtp_server)
