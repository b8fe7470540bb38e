"""The ``retention:`` block of carepost.yaml: days kept per data class.

```yaml
retention:
  engagement_events: 730   # opens, clicks, unsubscribes, conversions
  deliveries: 2190         # settled delivery rows
  outbox_pushed: 90        # CDP events already pushed
  inbox_events: 90         # CDP events received by the service
  audit_entries: 2555      # kept longest
  legal_holds:
    - campaign: missed_appointment
      reason: "matter 2024-017"
```

Audit entries are kept at least six years, the retention HIPAA sets for
required documentation (45 CFR 164.316(b)(2)(i)), and at least as long
as any other class, so the log still explains every row it outlived.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

SIX_YEARS_DAYS = 2190


class LegalHold(BaseModel):
    """A campaign whose rows the purge must keep until the hold is removed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    campaign: str = Field(min_length=1)
    reason: str = Field(min_length=1)


class RetentionSettings(BaseModel):
    """Days each data class is kept after its timestamp, and legal holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engagement_events: int = Field(default=730, ge=1)
    deliveries: int = Field(default=2190, ge=30)
    outbox_pushed: int = Field(default=90, ge=1)
    inbox_events: int = Field(default=90, ge=1)
    audit_entries: int = Field(default=2555, ge=SIX_YEARS_DAYS)
    legal_holds: tuple[LegalHold, ...] = ()

    @model_validator(mode="after")
    def _audit_kept_longest(self) -> RetentionSettings:
        longest = max(self.engagement_events, self.deliveries,
                      self.outbox_pushed, self.inbox_events)
        if self.audit_entries < longest:
            raise ValueError(
                f"audit_entries ({self.audit_entries} days) must be at least the "
                f"longest other retention ({longest} days), so the audit log "
                "outlives the rows it describes")
        return self

    @property
    def held_campaigns(self) -> frozenset[str]:
        return frozenset(hold.campaign for hold in self.legal_holds)

    def days_for(self, data_class: str) -> int:
        return int(getattr(self, data_class))
