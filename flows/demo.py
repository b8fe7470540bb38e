"""``carepost demo``: every shipped campaign against an embedded STARTTLS server.

The demo works in its own state folder (``<state_dir>/demo``), which it
clears first so its counts are the same on every run and machine. It
writes a real configuration file there that points the sender at the
embedded server and its throwaway CA, so the campaigns run through
exactly the path ``carepost run`` takes.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from carepost.connectors.local_smtp import LocalTlsSmtpServer
from carepost.core.campaign import load_campaigns
from carepost.core.settings import Settings

# The shipped data runs to mid-February 2024 (appointment outcomes are
# simulated up to that reference date), so the demo runs as of it.
DEMO_RUN_DATE = "2024-02-15"
# The demo's CDP is a file, whatever sink carepost.yaml names.
DEMO_SINK_FILE = "cdp-events.jsonl"


@dataclass(frozen=True)
class DemoPaths:
    state: Path
    config: Path
    mailbox: Path
    events: Path
    ledger: Path


def prepare_demo(settings: Settings, config_path: Path) -> DemoPaths:
    """Clear the demo state folder and return where the demo writes."""
    state = settings.state_path / "demo"
    if state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True)
    return DemoPaths(state=state, config=state / "carepost.yaml",
                     mailbox=state / "mailbox",
                     events=state / DEMO_SINK_FILE,
                     ledger=state / "ledger.db")


def write_demo_config(config_path: Path, paths: DemoPaths,
                      server: LocalTlsSmtpServer) -> None:
    """Write the project's configuration with the embedded server as relay."""
    raw: dict[str, Any] = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    raw["root"] = str(config_path.resolve().parent)
    raw["state_dir"] = str(paths.state)
    raw["sink"] = {"kind": "jsonl", "path": DEMO_SINK_FILE}
    raw["smtp"] = {**raw.get("smtp", {}), "host": server.host, "port": server.port,
                   "tls": "starttls", "ca_file": str(server.ca_file),
                   "username": None, "password_env": None}
    paths.config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


def demo_campaigns(settings: Settings) -> list[str]:
    """Return the scheduled campaigns; triggered ones need events to run."""
    campaigns = load_campaigns(settings.path(settings.campaigns_dir))
    return [name for name, spec in campaigns.items() if spec.trigger is None]
