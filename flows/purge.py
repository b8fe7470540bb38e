"""The ``purge`` Prefect flow: enforce the retention of carepost.yaml.

``carepost serve`` runs it daily (``PURGE_CRON``, in the practice's time
zone); ``carepost purge`` runs it once.
Its parameters and result are counts and flags only. Every real run
appends one ``retention.purged`` audit entry with the rows removed per
data class; a dry run counts and changes nothing.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from carepost.core.campaign import load_campaigns
from carepost.core.settings import load_settings
from carepost.ledger.retention import check_legal_holds, purge_expired

# Daily at 03:30, in the time zone of the deployment that uses it.
PURGE_CRON = "30 3 * * *"


@flow(name="purge", flow_run_name="purge-{dry_run}", persist_result=False)
async def purge_flow(dry_run: bool = False) -> dict[str, Any]:
    """Remove ledger rows older than their retention and audit the counts."""
    logger = get_run_logger()
    settings = load_settings()
    campaigns = load_campaigns(settings.path(settings.campaigns_dir))
    check_legal_holds(settings.ledger_url, settings.retention, set(campaigns))
    report = purge_expired(settings.ledger_url, settings.retention, dry_run=dry_run)
    logger.info("purge %s: %s", "dry run" if dry_run else "done", report.removed)
    return report.as_dict()
