"""Settings of the named CDP sources under ``sources:`` in ``carepost.yaml``.

Each source has a ``kind`` (``files``, ``fhir`` or ``segment``). Credentials
are never written in the file or in a URL: a source names the environment
variable that contains each secret, and the secret is read into a
``SecretStr`` only when the source syncs. HTTP sources require ``https``,
except on a loopback address (the local test servers).
"""

from __future__ import annotations

import os
from ipaddress import ip_address
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr

from carepost.core.errors import ConfigError

LOOPBACK_HOSTS = frozenset({"localhost"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def require_tls_url(url: str) -> str:
    """Return ``url`` if it is https, or http on a loopback host; raise otherwise."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise ValueError("a URL must not carry credentials; name an environment variable")
    host = parts.hostname or ""
    if parts.scheme in ("https", "http") and not host:
        raise ValueError(f"{url!r} has no host name; write it as https://host/path")
    if parts.scheme == "https":
        return url
    try:
        loopback = host in LOOPBACK_HOSTS or ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme == "http" and loopback:
        return url
    raise ValueError(f"{url!r} is not an https URL; change it to https:// "
                     "(http is allowed only on a loopback host such as 127.0.0.1)")


def require_time_zone(name: str) -> str:
    """Return ``name`` if it is a known IANA time zone; raise otherwise."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA time zone {name!r}; use a name such as "
                         "'America/Chicago' or 'UTC'") from None
    return name


def read_secret(env_name: str, what: str) -> SecretStr:
    """Read the secret named by ``env_name``; raise ConfigError when it is unset."""
    value = os.environ.get(env_name)
    if not value:
        raise ConfigError(
            f"{what}: environment variable {env_name} is not set",
            hint=f"export {env_name} before syncing",
        )
    return SecretStr(value)


# A URL that reaches a server only over TLS (see require_tls_url).
TlsUrl = Annotated[str, AfterValidator(require_tls_url)]
# An IANA time zone name that this machine's tz database contains.
TimeZoneName = Annotated[str, AfterValidator(require_time_zone)]


class FileSource(_Strict):
    """A CDP or warehouse export on disk: CSV, Parquet or NDJSON.

    ``profiles`` and ``events`` are paths or glob patterns relative to the
    project. ``mapping`` names a YAML file that maps canonical columns to
    the export's columns. Times without a UTC offset are read in
    ``timezone``. With ``full: true`` every sync is a complete export, so
    rows missing from it are deleted.
    """

    kind: Literal["files"] = "files"
    profiles: str | None = None
    events: str | None = None
    mapping: str | None = None
    encoding: Literal["utf-8", "latin-1"] = "utf-8"
    timezone: TimeZoneName = "UTC"
    full: bool = False


class SmartAuth(_Strict):
    """SMART backend-services credentials (a signed JWT for an access token).

    The private key (PEM) comes from the environment variable
    ``private_key_env`` or from the file ``private_key_file``.
    """

    token_url: TlsUrl
    client_id: str
    key_id: str
    private_key_env: str | None = None
    private_key_file: str | None = None
    scope: str = "system/*.read"
    algorithm: Literal["RS384", "ES384"] = "RS384"


class FhirSource(_Strict):
    """A FHIR R4 server: Bulk Data ``$export`` or REST search with paging."""

    kind: Literal["fhir"] = "fhir"
    base_url: TlsUrl
    mode: Literal["bulk", "search"] = "bulk"
    group: str | None = None
    types: list[str] = Field(default_factory=lambda: [
        "Patient", "Condition", "Encounter", "Appointment", "MedicationRequest",
        "MedicationDispense", "Observation", "Consent",
    ])
    page_size: int = Field(default=100, ge=1, le=1000)
    auth: SmartAuth | None = None
    timeout_seconds: float = 60.0
    # Maximum wait for an export to finish, polls included.
    max_wait_seconds: float = Field(default=3600.0, gt=0)
    # Tries per request on 429, 5xx and timeouts; the backoff doubles from
    # backoff_seconds when the server sends no Retry-After.
    max_attempts: int = Field(default=6, ge=1, le=20)
    backoff_seconds: float = Field(default=0.5, gt=0)


class SegmentSource(_Strict):
    """The Segment Profile API: traits and events of profiles already loaded."""

    kind: Literal["segment"] = "segment"
    space_id: str
    base_url: TlsUrl = "https://profiles.segment.com"
    token_env: str = "CAREPOST_SEGMENT_TOKEN"
    id_type: str = "user_id"
    event_types: dict[str, str] = Field(default_factory=lambda: {
        "Appointment Booked": "appointment_booked",
        "Appointment Attended": "appointment_attended",
        "Appointment Missed": "appointment_no_show",
        "Appointment Cancelled": "appointment_cancelled",
        "Prescription Written": "prescription_written",
        "Prescription Filled": "prescription_filled",
        "Portal Login": "portal_login",
        "Form Submitted": "form_submitted",
    })
    page_size: int = Field(default=100, ge=1, le=100)
    timeout_seconds: float = 30.0
    # Profiles fetched at once; the API allows 100 requests/s per space.
    concurrency: int = Field(default=4, ge=1, le=16)
    # Tries per request on 429 and 5xx, with a doubling backoff.
    max_attempts: int = Field(default=6, ge=1, le=20)
    backoff_seconds: float = Field(default=0.5, gt=0)


Source = Annotated[FileSource | FhirSource | SegmentSource, Field(discriminator="kind")]
