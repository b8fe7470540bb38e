"""Engagement report: counts, human-only rates, the small-cell rule, exports."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlmodel import Session
from typer.testing import CliRunner

from carepost.core.campaign import load_campaigns
from carepost.core.states import DeliveryState, Purpose
from carepost.flows.cli import app
from carepost.flows.report import build_report, export, markdown
from carepost.flows.report_html import html_report
from carepost.ledger import Delivery, Ledger, Settlement
from carepost.ledger.engagement import Engagement, Hit, Verdict, record_conversion

from ..conftest import REPO
from ..service.conftest import add_sent_delivery

CAMPAIGN = "diabetes_education"
T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


def _hit(ledger: Ledger, delivery_id: int, kind: str, verdict: Verdict,
         link: int | None = None) -> None:
    engagement = Engagement(ledger)
    engagement.record(engagement.delivery(delivery_id),
                      Hit(kind=kind, verdict=verdict, rule=None, occurred_at=T0,
                          link_index=link))


def _settled(ledger: Ledger, profile_id: str, state: DeliveryState) -> None:
    claim = ledger.claim(campaign=CAMPAIGN, run_key="2024-02-15",
                         profile_id=profile_id, purpose=Purpose.MARKETING,
                         template=CAMPAIGN, template_version="v1")
    ledger.settle(claim.delivery_id, Settlement(state))


@pytest.fixture
def filled(ledger: Ledger) -> Ledger:
    """30 sent, 2 bounced, 3 suppressed; 20 human opens, 6 machine, 12 clicks."""
    sent = [add_sent_delivery(ledger, f"p-{n}", campaign=CAMPAIGN,
                              purpose=Purpose.MARKETING) for n in range(30)]
    for n in range(2):
        _settled(ledger, f"b-{n}", DeliveryState.BOUNCED)
    for n in range(3):
        _settled(ledger, f"s-{n}", DeliveryState.SUPPRESSED)
    for delivery in sent[:20]:
        _hit(ledger, delivery, "open", Verdict.HUMAN)
        _hit(ledger, delivery, "open", Verdict.HUMAN)  # the same bucket: deduped
    for delivery in sent[20:26]:
        _hit(ledger, delivery, "open", Verdict.MACHINE)
    for delivery in sent[:12]:
        _hit(ledger, delivery, "click", Verdict.HUMAN, link=0)
    _hit(ledger, sent[0], "unsubscribe", Verdict.HUMAN)
    for n, delivery in enumerate(sent[:3]):
        record_conversion(ledger, f"p-{n}", "appointment_booked",
                          T0 + timedelta(days=1), f"conv-{n}",
                          goals={CAMPAIGN: load_campaigns(REPO / "campaigns")[CAMPAIGN].goal})
    return ledger


def _campaign():
    return load_campaigns(REPO / "campaigns")[CAMPAIGN]


def test_report_counts_per_template(filled: Ledger) -> None:
    report = build_report(filled, _campaign())

    assert len(report.rows) == 1
    row = report.rows[0]
    assert (row.segment, row.template, row.template_version) == (
        "diabetes_prediabetes_adults", CAMPAIGN, "v1")
    assert row.counts == {"delivered": 30, "dropped": 3, "bounced": 2,
                          "human_opens": 20, "machine_opens": 6, "human_clicks": 12,
                          "machine_clicks": 0, "unsubscribes": 1, "conversions": 3}
    assert row.rate("open_rate") == pytest.approx(20 / 30)
    assert row.rate("click_rate") == pytest.approx(12 / 30)
    assert report.goal == "appointment_booked within 14 days"


def test_report_filters_by_run(filled: Ledger) -> None:
    assert build_report(filled, _campaign(), "2024-02-16").rows == []
    assert build_report(filled, _campaign(), "2024-02-15").rows[0].counts["delivered"] == 30


def test_export_masks_small_cells(filled: Ledger) -> None:
    row = export(build_report(filled, _campaign()))["rows"][0]

    assert row["delivered"] == 30
    assert row["human_opens"] == 20
    assert row["human_clicks"] == 12
    for name in ("dropped", "bounced", "machine_opens", "machine_clicks",
                 "unsubscribes", "conversions"):
        assert row[name] == "<11", name
    assert row["open_rate"] == pytest.approx(0.6667)
    assert row["unsubscribe_rate"] is None
    assert row["conversion_rate"] is None


def test_html_and_markdown_carry_no_ids(filled: Ledger) -> None:
    report = build_report(filled, _campaign())

    page = html_report(report)
    table = markdown(report)

    assert "<svg" in page
    assert "<script" not in page
    assert "&lt;11" in page
    assert "| <11 |" in table
    for text in (page, table):
        assert "p-1" not in text
        assert "example.test" not in text


def _config(tmp_path: Path, ledger_state: Path) -> Path:
    raw = yaml.safe_load((REPO / "carepost.yaml").read_text())
    raw.update({"root": str(REPO), "state_dir": str(ledger_state)})
    path = tmp_path / "carepost.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_report_command_json_and_html(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    ledger = Ledger(f"sqlite:///{state / 'ledger.db'}")
    for n in range(12):
        delivery = add_sent_delivery(ledger, f"p-{n}", campaign=CAMPAIGN,
                                     purpose=Purpose.MARKETING)
        _hit(ledger, delivery, "open", Verdict.HUMAN)
    ledger.close()
    config = _config(tmp_path, state)
    html_path = tmp_path / "report.html"

    result = CliRunner().invoke(app, ["report", CAMPAIGN, "--json", "--html",
                                      str(html_path), "--config", str(config)])
    table = CliRunner().invoke(app, ["report", CAMPAIGN, "--config", str(config)])
    missing = CliRunner().invoke(app, ["report", "nope", "--config", str(config)])
    bad_date = CliRunner().invoke(app, ["report", CAMPAIGN, "--run", "15/02",
                                        "--config", str(config)])

    assert result.exit_code == 0, result.output
    row = json.loads(result.output)["rows"][0]
    assert row["delivered"] == 12
    assert row["human_opens"] == 12
    assert row["human_clicks"] == "<11"
    assert "<svg" in html_path.read_text()
    assert table.exit_code == 0
    assert "diabetes_education" in table.output
    assert missing.exit_code == 1
    assert "not found" in missing.output
    assert bad_date.exit_code == 2


def test_dropped_includes_render_failures(ledger: Ledger) -> None:
    _settled(ledger, "r-1", DeliveryState.RENDER_FAILED)
    _settled(ledger, "d-1", DeliveryState.DROPPED_NO_TLS)
    with Session(ledger.engine) as session:
        assert session.get(Delivery, 1) is not None

    row = build_report(ledger, _campaign()).rows[0]

    assert row.counts["dropped"] == 2
    assert row.rate("open_rate") is None
