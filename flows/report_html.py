"""The engagement report as one HTML file with an inline SVG chart.

The page has no script and loads nothing, so it opens anywhere and can
be mailed as an attachment. It is built from ``report.export`` only, so
the small-cell rule holds: a masked count gets no bar, only its label.
"""

from __future__ import annotations

from html import escape
from typing import Any

from carepost.flows.report import COUNTS, RATES, SMALL_CELL, SMALL_CELL_TEXT, Report, export

CHART_SERIES = (("delivered", "#8da0cb"), ("human_opens", "#66c2a5"),
                ("human_clicks", "#fc8d62"), ("conversions", "#e78ac3"))
BAR_WIDTH, BAR_GAP, GROUP_GAP, CHART_HEIGHT = 28, 4, 36, 180


def _bars(rows: list[dict[str, Any]]) -> tuple[list[str], int]:
    numbers = [row[name] for row in rows for name, _ in CHART_SERIES
               if isinstance(row[name], int)]
    top = max(numbers, default=1) or 1
    parts: list[str] = []
    x = GROUP_GAP
    for row in rows:
        for name, colour in CHART_SERIES:
            value = row[name]
            label = escape(str(value))
            if isinstance(value, int):
                height = round(value / top * CHART_HEIGHT)
                y = 20 + CHART_HEIGHT - height
                parts.append(f'<rect x="{x}" y="{y}" width="{BAR_WIDTH}" '
                             f'height="{height}" fill="{colour}"><title>{name}: '
                             f'{label}</title></rect>')
            else:
                y = 20 + CHART_HEIGHT
            parts.append(f'<text x="{x + BAR_WIDTH / 2}" y="{y - 4}" '
                         f'text-anchor="middle" font-size="10">{label}</text>')
            x += BAR_WIDTH + BAR_GAP
        caption = escape(f"{row['template']} {row['template_version']}")
        parts.append(f'<text x="{x - (BAR_WIDTH + BAR_GAP) * 2}" '
                     f'y="{CHART_HEIGHT + 38}" text-anchor="middle" '
                     f'font-size="11">{caption}</text>')
        x += GROUP_GAP
    return parts, x


def chart_svg(rows: list[dict[str, Any]]) -> str:
    """Return a grouped bar chart of the masked counts as inline SVG."""
    parts, width = _bars(rows)
    legend_x = GROUP_GAP
    for name, colour in CHART_SERIES:
        parts.append(f'<rect x="{legend_x}" y="{CHART_HEIGHT + 52}" width="10" '
                     f'height="10" fill="{colour}"/>')
        parts.append(f'<text x="{legend_x + 14}" y="{CHART_HEIGHT + 61}" '
                     f'font-size="11">{name.replace("_", " ")}</text>')
        legend_x += 120
    width = max(width, legend_x)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" '
            f'width="{width}" height="{CHART_HEIGHT + 70}" '
            f'aria-label="Engagement counts per template">{"".join(parts)}</svg>')


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1%}"
    return escape(str(value))


def html_report(report: Report) -> str:
    """Return the whole page: heading, chart, masked table and the rule."""
    data = export(report)
    columns = ["segment", "template", "template_version", *COUNTS, *RATES]
    head = "".join(f"<th>{escape(name.replace('_', ' '))}</th>" for name in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(row[name])}</td>" for name in columns) + "</tr>"
        for row in data["rows"])
    title = escape(f"Engagement: {report.campaign}")
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{title}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:4px 8px;text-align:right}</style></head><body>"
        f"<h1>{title}</h1>"
        f"<p>Run: {escape(report.run or 'all runs')}. Goal: "
        f"{escape(report.goal or 'none')}. Generated {escape(report.generated_at)}.</p>"
        f"{chart_svg(data['rows'])}"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        f"<p>Rates count human events only. Counts under {SMALL_CELL} are shown "
        f"as {escape(SMALL_CELL_TEXT)} and their rates as -.</p></body></html>")


__all__ = ["chart_svg", "html_report"]
