"""Engagement report of one campaign, per segment and template version.

Counts, each per delivery (a message opened five times counts once):

- ``delivered``: deliveries in state ``sent``;
- ``dropped``: not sent by carepost's own decision (``dropped_no_tls``,
  ``suppressed`` by a send-time check, ``render_failed``);
- ``bounced``: rejected by the receiving server;
- ``human_opens`` / ``machine_opens``, ``human_clicks`` /
  ``machine_clicks``: deliveries with at least one such event;
- ``unsubscribes``: deliveries whose one-click unsubscribe was used;
- ``conversions``: goal events attributed to the deliveries (attribution
  already requires a human open or click inside the goal's window).

Rates divide human events by ``delivered``, so machine events never
enter a rate. The small-cell rule covers every export that leaves the
machine (JSON, HTML, the Prefect artifact). A count under 11, zero
included, is shown as ``"<11"``. A rate whose count or denominator is
under 11 is shown as null (``-`` in HTML and Markdown). The terminal
table shows exact counts.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session, select

from carepost.core.campaign import Campaign
from carepost.core.states import DeliveryState
from carepost.ledger import Delivery, Ledger
from carepost.ledger.engagement import Conversion, EngagementEvent

SMALL_CELL = 11
SMALL_CELL_TEXT = "<11"
DROPPED_STATES = {DeliveryState.DROPPED_NO_TLS.value, DeliveryState.SUPPRESSED.value,
                  DeliveryState.RENDER_FAILED.value}
COUNTS = ("delivered", "dropped", "bounced", "human_opens", "machine_opens",
          "human_clicks", "machine_clicks", "unsubscribes", "conversions")
RATES = {"open_rate": "human_opens", "click_rate": "human_clicks",
         "unsubscribe_rate": "unsubscribes", "conversion_rate": "conversions"}


@dataclass
class ReportRow:
    segment: str
    template: str
    template_version: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))

    def rate(self, name: str) -> float | None:
        delivered = self.counts["delivered"]
        if not delivered:
            return None
        return self.counts[RATES[name]] / delivered


@dataclass
class Report:
    campaign: str
    run: str | None
    goal: str | None
    rows: list[ReportRow]
    generated_at: str


def _segment_label(campaign: Campaign) -> str:
    return f"{campaign.segment}:{campaign.stage}" if campaign.stage else campaign.segment


def _deliveries(session: Session, campaign: str, run: str | None) -> list[Delivery]:
    query = select(Delivery).where(Delivery.campaign == campaign)
    if run is not None:
        query = query.where(Delivery.run_key == run)
    return list(session.exec(query))


def _engaged(session: Session, campaign: str) -> dict[int, set[str]]:
    """Map delivery id to labels such as ``human_opens`` it earned."""
    labels = {("open", "human"): "human_opens", ("open", "machine"): "machine_opens",
              ("click", "human"): "human_clicks", ("click", "machine"): "machine_clicks",
              ("unsubscribe", "human"): "unsubscribes"}
    found: dict[int, set[str]] = defaultdict(set)
    rows = session.exec(select(EngagementEvent.delivery_id, EngagementEvent.kind,
                               EngagementEvent.verdict)
                        .where(EngagementEvent.campaign == campaign))
    for delivery_id, kind, verdict in rows:
        label = labels.get((kind, verdict))
        if label:
            found[delivery_id].add(label)
    return found


def _conversions(session: Session, campaign: str) -> dict[int, int]:
    counts: dict[int, int] = defaultdict(int)
    rows = session.exec(select(Conversion.delivery_id)
                        .where(Conversion.campaign == campaign))
    for delivery_id in rows:
        counts[delivery_id] += 1
    return counts


def build_report(ledger: Ledger, campaign: Campaign, run: str | None = None) -> Report:
    """Count one campaign's outcomes (all runs, or the run dated ``run``)."""
    segment = _segment_label(campaign)
    rows: dict[tuple[str, str], ReportRow] = {}
    with Session(ledger.engine) as session:
        deliveries = _deliveries(session, campaign.name, run)
        engaged = _engaged(session, campaign.name)
        converted = _conversions(session, campaign.name)
    for delivery in deliveries:
        key = (delivery.template or campaign.template, delivery.template_version or "-")
        row = rows.setdefault(key, ReportRow(segment, *key))
        if delivery.state == DeliveryState.SENT.value:
            row.counts["delivered"] += 1
        elif delivery.state in DROPPED_STATES:
            row.counts["dropped"] += 1
        elif delivery.state == DeliveryState.BOUNCED.value:
            row.counts["bounced"] += 1
        for label in engaged.get(delivery.id, ()):
            row.counts[label] += 1
        row.counts["conversions"] += converted.get(delivery.id, 0)
    goal = campaign.goal
    return Report(campaign=campaign.name, run=run,
                  goal=f"{goal.event} within {goal.within_days} days" if goal else None,
                  rows=[rows[key] for key in sorted(rows)],
                  generated_at=datetime.now(UTC).isoformat(timespec="seconds"))


# -- exports: the small-cell rule applies to everything below ---------------


def masked_count(value: int) -> int | str:
    return SMALL_CELL_TEXT if value < SMALL_CELL else value


def masked_rate(row: ReportRow, name: str) -> float | None:
    count, delivered = row.counts[RATES[name]], row.counts["delivered"]
    if count < SMALL_CELL or delivered < SMALL_CELL:
        return None
    return round(count / delivered, 4)


def export(report: Report) -> dict[str, Any]:
    """Return the report as JSON-ready data with small cells masked."""
    data = asdict(report)
    data["rows"] = [
        {"segment": row.segment, "template": row.template,
         "template_version": row.template_version,
         **{name: masked_count(value) for name, value in row.counts.items()},
         **{name: masked_rate(row, name) for name in RATES}}
        for row in report.rows
    ]
    data["small_cell_rule"] = (f"counts under {SMALL_CELL} are shown as "
                               f"{SMALL_CELL_TEXT!r}; their rates are null")
    return data


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1%}"
    return str(value)


def markdown(report: Report) -> str:
    """Return the masked table as Markdown (the Prefect artifact)."""
    rows = export(report)["rows"]
    columns = ["segment", "template", "template_version", *COUNTS, *RATES]
    lines = [f"## Engagement: {report.campaign}",
             f"Run: {report.run or 'all runs'}; goal: {report.goal or 'none'}; "
             f"counts under {SMALL_CELL} shown as {SMALL_CELL_TEXT}.", "",
             "| " + " | ".join(columns) + " |",
             "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[name]) for name in columns) + " |")
    return "\n".join(lines) + "\n"


async def publish_artifact(report: Report) -> bool:
    """Attach the masked table to the current Prefect flow run, if any."""
    from prefect.artifacts import acreate_markdown_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return False
    key = "engagement-" + report.campaign.replace("_", "-")
    await acreate_markdown_artifact(markdown=markdown(report), key=key,
                                    description=f"Engagement of {report.campaign} "
                                                "(small cells masked)")
    return True


__all__ = ["Report", "ReportRow", "build_report", "export", "markdown",
           "masked_count", "masked_rate", "publish_artifact"]
