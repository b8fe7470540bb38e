"""The Segment Profile API source against a local fake of the API."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from carepost.connectors.segment_profiles import SegmentError, sync_segment
from carepost.connectors.sync import get_watermark, stage_records
from carepost.connectors.sync import apply_staged_profiles
from carepost.core.schema import PROFILE_COLUMNS, create_tables
from carepost.core.sources import SegmentSource

from tests.support.uvicorn_thread import UvicornThread
from .segment_server import SPACE, TOKEN, Profile, SegmentServer, track

TOKEN_ENV = "CAREPOST_TEST_SEGMENT_TOKEN"


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


@pytest.fixture
def segment(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    server = SegmentServer()
    with UvicornThread(server.app) as running:
        server.url = running.url
        yield server


def spec(server: SegmentServer, **fields) -> SegmentSource:
    values = {"space_id": SPACE, "base_url": server.url, "token_env": TOKEN_ENV,
              "page_size": 2, "backoff_seconds": 0.01}
    values.update(fields)
    return SegmentSource(**values)


def known(conn, *ids: str) -> None:
    """Load profile ids as another source would."""
    create_tables(conn)
    stage_records(conn, [{"source_row": n, "profile_id": pid} for n, pid in enumerate(ids, 1)],
                  PROFILE_COLUMNS)
    apply_staged_profiles(conn, "crm")


async def test_traits_and_events_are_synced(conn, tmp_path, segment) -> None:
    now = datetime.now(timezone.utc)
    segment.profiles["pt-000123"] = Profile(
        traits={"email": " Avery@EXAMPLE.org", "first_name": "Avery", "birthday": "1980-04-02",
                "address": {"postal_code": "68508", "state": "NE"},
                "conditions": ["type_2_diabetes"], "last_checkup_at": "2024-01-15T09:30:00Z"},
        events=[
            track("api-1", "Appointment Missed", iso(now - timedelta(days=2)),
                  appointment_id="apt-88412"),
            track("api-2", "Page Viewed", iso(now - timedelta(days=1))),
            track("api-3", "Prescription Filled", iso(now - timedelta(hours=3)), rx_id="rx-5531"),
            track("api-old", "Appointment Booked", iso(now - timedelta(days=20))),
        ])
    known(conn, "pt-000123")

    summary = await sync_segment(conn, "cdp", spec(segment), tmp_path)

    row = conn.execute(
        "SELECT email, first_name, birth_date, postal_code, state, traits FROM profiles"
    ).fetchone()
    assert row[:5] == ("Avery@example.org", "Avery", datetime(1980, 4, 2).date(), "68508", "NE")
    assert json.loads(row[5]) == {"conditions": ["type_2_diabetes"],
                                  "last_checkup_at": "2024-01-15T09:30:00Z"}
    events = conn.execute("SELECT event_id, type FROM events ORDER BY 1").fetchall()
    assert events == [("api-1", "appointment_no_show"), ("api-3", "prescription_filled")]
    assert summary.unmapped_records == 1  # Page Viewed
    assert summary.profiles == 1
    assert get_watermark(conn, "cdp") == summary.watermark


async def test_request_shapes(conn, tmp_path, segment) -> None:
    segment.profiles["PT+1/a"] = Profile(traits={"a": 1, "b": 2, "c": 3})
    known(conn, "PT+1/a")

    await sync_segment(conn, "cdp", spec(segment, id_type="USER_ID"), tmp_path)

    traits_paths = [path for path in segment.raw_paths if path.endswith("/traits")]
    assert traits_paths[0] == (
        f"/v1/spaces/{SPACE}/collections/users/profiles/user_id:PT%2B1%2Fa/traits")
    assert len(traits_paths) == 2  # three traits, two per page
    assert segment.queries[1] == {"limit": "2", "next": "2"}
    events_query = next(q for q, p in zip(segment.queries, segment.raw_paths)
                        if p.endswith("/events"))
    start = datetime.fromisoformat(events_query["start"].replace("Z", "+00:00"))
    assert datetime.now(timezone.utc) - start <= timedelta(days=14, minutes=1)
    traits = conn.execute("SELECT traits FROM profiles").fetchone()[0]
    assert json.loads(traits) == {"a": 1, "b": 2, "c": 3}


async def test_rate_limit_is_retried(conn, tmp_path, segment) -> None:
    segment.profiles["p1"] = Profile(traits={"first_name": "Bo"})
    segment.throttle_first = 3
    known(conn, "p1")

    summary = await sync_segment(conn, "cdp", spec(segment, concurrency=1), tmp_path)

    assert segment.statuses[:4] == [429, 429, 429, 200]
    assert summary.profiles == 1


async def test_persistent_rate_limit_fails(conn, tmp_path, segment) -> None:
    segment.profiles["p1"] = Profile(traits={})
    segment.throttle_first = 100
    known(conn, "p1")

    with pytest.raises(SegmentError, match="kept failing after 3 tries"):
        await sync_segment(conn, "cdp", spec(segment, max_attempts=3), tmp_path)
    assert get_watermark(conn, "cdp") is None


async def test_missing_profile_is_recorded(conn, tmp_path, segment) -> None:
    segment.profiles["p1"] = Profile(traits={"first_name": "Cy"})
    known(conn, "p1", "p2")

    summary = await sync_segment(conn, "cdp", spec(segment), tmp_path)

    assert summary.missing_profiles == 1
    missing = conn.execute("SELECT source, profile_id FROM segment_missing_profiles").fetchall()
    assert missing == [("cdp", "p2")]
    assert conn.execute("SELECT count(*) FROM profiles").fetchone()[0] == 2


async def test_rerun_starts_events_at_watermark(conn, tmp_path, segment) -> None:
    segment.profiles["p1"] = Profile(traits={})
    known(conn, "p1")
    first = await sync_segment(conn, "cdp", spec(segment), tmp_path)

    await sync_segment(conn, "cdp", spec(segment), tmp_path)

    starts = [q["start"] for q, p in zip(segment.queries, segment.raw_paths)
              if p.endswith("/events")]
    assert starts[-1] == first.watermark.replace("Z", ".000Z")


async def test_wrong_token_fails_without_printing_it(conn, tmp_path, segment,
                                                     monkeypatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "not-the-token")
    segment.profiles["p1"] = Profile(traits={})
    known(conn, "p1")

    with pytest.raises(SegmentError) as caught:
        await sync_segment(conn, "cdp", spec(segment), tmp_path)
    assert "authentication_error" in str(caught.value)
    assert "not-the-token" not in str(caught.value)
