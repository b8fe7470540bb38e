"""The ``feedback`` flow on the session's real Prefect server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from carepost.core.states import Purpose
from carepost.ledger import Ledger
from carepost.ledger.engagement import Engagement, Hit, Verdict

from ..conftest import REPO
from ..service.conftest import add_sent_delivery

pytestmark = pytest.mark.prefect


async def _artifacts(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def test_feedback_pushes_and_attaches_report(
        tmp_path: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    state.mkdir()
    ledger = Ledger(f"sqlite:///{state / 'ledger.db'}")
    engagement = Engagement(ledger)
    for n in range(13):
        delivery = add_sent_delivery(ledger, f"pt-{n:03d}", campaign="checkup_reminder",
                                     purpose=Purpose.CARE)
        engagement.record(engagement.delivery(delivery), Hit(
            kind="open", verdict=Verdict.HUMAN, rule=None,
            occurred_at=engagement.delivery(delivery).updated_at))
    ledger.close()
    raw = yaml.safe_load((REPO / "carepost.yaml").read_text())
    raw.update({"root": str(REPO), "state_dir": str(state)})
    config = tmp_path / "carepost.yaml"
    config.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("CAREPOST_CONFIG", str(config))
    from carepost.flows.feedback import feedback_flow

    summary = asyncio.run(feedback_flow())
    again = asyncio.run(feedback_flow())

    assert summary["pushed"] == 13
    assert again["pushed"] == 0
    lines = (state / "cdp-events.jsonl").read_text().splitlines()
    assert sorted({json.loads(line)["type"] for line in lines}) == ["email_opened"]
    artifacts = asyncio.run(_artifacts("engagement-checkup-reminder"))
    assert artifacts
    text = artifacts[0].data
    assert "| 13 |" in text
    assert "pt-0" not in text
    assert "example.test" not in text
