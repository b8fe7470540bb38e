"""Build a throwaway carepost project around the shipped sample export.

Tests change copies of the shipped files (a marker patient, a broken
profile, another SMTP server) and never the files in the repository.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.conftest import REPO

RUN_DATE = "2024-02-15"


@dataclass
class Project:
    root: Path
    config: Path
    state: Path
    profiles: Path

    def rewrite_profiles(self, changes: dict[str, dict[str, str]]) -> None:
        """Apply ``{profile_id: {column: value}}`` to the copied profiles.csv."""
        with self.profiles.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            row.update(changes.get(row["profile_id"], {}))
        with self.profiles.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    def set_smtp(self, **smtp: object) -> None:
        raw = yaml.safe_load(self.config.read_text())
        raw["smtp"] = {**raw["smtp"], "username": None, "password_env": None, **smtp}
        self.config.write_text(yaml.safe_dump(raw, sort_keys=False))


def make_project(folder: Path) -> Project:
    data = folder / "data"
    data.mkdir(parents=True)
    shutil.copy(REPO / "data/sample/profiles.csv", data / "profiles.csv")
    shutil.copy(REPO / "data/sample/events.parquet", data / "events.parquet")
    shutil.copytree(REPO / "templates/library", folder / "templates")
    shutil.copytree(REPO / "campaigns", folder / "campaigns")
    raw = yaml.safe_load((REPO / "carepost.yaml").read_text())
    raw.update({
        "root": str(folder),
        "state_dir": str(folder / "state"),
        "source": {"kind": "files", "profiles": "data/profiles.csv",
                   "events": "data/events.parquet"},
        "campaigns_dir": "campaigns",
        "templates_dir": "templates",
        "segments_dir": str(REPO / "segments/library"),
    })
    config = folder / "carepost.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return Project(root=folder, config=config, state=folder / "state",
                   profiles=data / "profiles.csv")


def segment_members(segment: str, stage: str | None = None) -> list[str]:
    """Profile ids the shipped segment selects on the shipped export."""
    from datetime import date

    import duckdb

    from carepost.connectors.files import load_export
    from carepost.segments import SegmentLibrary

    conn = duckdb.connect()
    load_export(conn, REPO / "data/sample/profiles.csv",
                REPO / "data/sample/events.parquet")
    library = SegmentLibrary(REPO / "segments/library")
    members = library.select(conn, segment, as_of=date.fromisoformat(RUN_DATE),
                             stage=stage)
    conn.close()
    return members
