"""Minimum necessary and purpose at send time, through ``deliver_batch``.

- A template receives only the fields it declares (spied on the Jinja
  context of a real render).
- A consent revoked in the CDP and re-synced between segment selection
  and the send stops the send.
"""

from __future__ import annotations

import csv
import functools
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pytest

from carepost.connectors.files import load_export
from carepost.connectors.local_smtp import LocalTlsSmtpServer
from carepost.connectors.smtp import TlsSender
from carepost.core.campaign import Campaign
from carepost.core.schema import create_tables
from carepost.core.settings import load_settings
from carepost.core.states import Purpose
from carepost.flows.delivery import RunContext, deliver_batch
from carepost.ledger import Ledger
from carepost.templates import TemplateLibrary, rendering
from tests.conftest import REPO
from tests.flows.project import RUN_DATE, make_project
from tests.flows.project import segment_members as _segment_members

DAY = date.fromisoformat(RUN_DATE)
MARKETING = Campaign(name="diabetes_education", segment="s",
                     template="diabetes_education", purpose=Purpose.MARKETING)
CARE = Campaign(name="missed_appointment", segment="missed_appointment",
                template="missed_appointment", purpose=Purpose.CARE)
# Keys the renderer adds beside the declared fields (see rendering.py).
NON_PROFILE_KEYS = {"practice", "unsubscribe_url", "message_id", "subject",
                    "preheader", "links", "message_language"}


async def _deliver(tmp_path: Path, warehouse: duckdb.DuckDBPyConnection,
                   campaign: Campaign, ids: list[str]) -> tuple[dict[str, int], Ledger]:
    settings = load_settings(REPO / "carepost.yaml")
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    library = TemplateLibrary(REPO / "templates/library", settings.practice)
    with LocalTlsSmtpServer(tmp_path / "mailbox") as server:
        smtp = settings.smtp.model_copy(update={
            "host": server.host, "port": server.port,
            "ca_file": str(server.ca_file), "username": None, "password_env": None})
        async with TlsSender(smtp) as sender:
            run = RunContext(
                settings=settings, campaign=campaign,
                template=library.get(campaign.template), run_key=RUN_DATE,
                run_date=DAY, ledger=ledger, warehouse=warehouse, sender=sender,
                address_key=b"k", token_keys={"k1": b"s"})
            counts = dict(await deliver_batch(run, ids))
    return counts, ledger


@functools.cache
def segment_members(segment: str) -> list[str]:
    return _segment_members(segment)


@pytest.fixture
def synced(tmp_path: Path):
    project = make_project(tmp_path / "project")
    warehouse = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    create_tables(warehouse)
    load_export(warehouse, project.profiles, project.root / "data/events.parquet")
    yield project, warehouse
    warehouse.close()


async def test_template_gets_declared_fields_only(
        tmp_path: Path, synced, monkeypatch: pytest.MonkeyPatch) -> None:
    _, warehouse = synced
    seen: list[set[str]] = []
    original = rendering.MessageTemplate._run

    def spy(self: Any, template: Any, context: dict[str, Any], *args: Any) -> str:
        seen.append(set(context))
        return original(self, template, context, *args)

    monkeypatch.setattr(rendering.MessageTemplate, "_run", spy)
    members = segment_members("missed_appointment")[:3]
    counts, ledger = await _deliver(tmp_path, warehouse, CARE, members)
    ledger.close()
    declared = set(TemplateLibrary(REPO / "templates/library",
                                   load_settings(REPO / "carepost.yaml").practice)
                   .get("missed_appointment").fields)
    assert counts.get("sent", 0) > 0
    assert seen
    for keys in seen:
        assert keys - NON_PROFILE_KEYS <= declared
        assert "last_name" not in keys or "last_name" in declared
        assert "email" not in keys


async def test_revocation_resynced_before_send(tmp_path: Path, synced) -> None:
    project, warehouse = synced
    members = segment_members("missed_appointment")[:2]
    revoked = members[0]
    # The CDP re-syncs the profile with contact consent withdrawn after the
    # segment was selected and before the batch is sent.
    project.rewrite_profiles({revoked: {"consent_contact": "false",
                                        "consent_marketing": "false"}})
    load_export(warehouse, project.profiles, project.root / "data/events.parquet")
    with project.profiles.open(newline="") as handle:
        rows = {row["profile_id"]: row for row in csv.DictReader(handle)}
    assert rows[revoked]["consent_contact"] == "false"

    counts, ledger = await _deliver(tmp_path, warehouse, CARE, members)
    with ledger.engine.connect() as connection:
        from sqlalchemy import text

        reason = connection.execute(
            text("SELECT reason FROM deliveries WHERE profile_id = :p"),
            {"p": revoked}).scalar_one()
    ledger.close()
    assert reason == "no contact consent"
    assert counts.get("suppressed", 0) >= 1
    assert counts.get("sent", 0) >= 1


async def test_marketing_needs_marketing_consent(tmp_path: Path, synced) -> None:
    project, warehouse = synced
    members = segment_members("missed_appointment")[:2]
    project.rewrite_profiles({members[0]: {"consent_marketing": "false",
                                           "consent_contact": "true"}})
    load_export(warehouse, project.profiles, project.root / "data/events.parquet")
    counts, ledger = await _deliver(tmp_path, warehouse, MARKETING, members[:1])
    ledger.close()
    assert counts == {"suppressed": 1}
