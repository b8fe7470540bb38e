"""Project settings: ``carepost.yaml`` and the state folder.

The file is validated once at start-up (unknown keys are errors, so a typo
never silently falls back to a default). Secrets are read from environment
variables named in the file; when a secret is not set, a random one is
created under the state folder with mode 0600 so the embedded defaults work
on a new machine without weakening anything.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from carepost.core.errors import ConfigError
from carepost.core.retention import RetentionSettings
from carepost.core.sources import FileSource, Source, TimeZoneName, TlsUrl
from carepost.core.yamlio import describe_validation_error, load_yaml_file

# The name under which the single ``source:`` of older files is synced.
LEGACY_SOURCE_NAME = "export"

CONFIG_FILE = "carepost.yaml"

# The reserved domain of the demo and the tests (RFC 6761), accepted with
# its subdomains although email-validator rejects special-use names.
RESERVED_TEST_DOMAIN = "example.test"


def _tcp_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"{value} is not a TCP port; expected 1-65535, such as "
                         "587 for starttls or 465 for implicit")
    return value


def _positive_seconds(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{value} is not a positive number of seconds; "
                         "expected a value above 0, such as 30")
    return value


def _email_address(value: str) -> str:
    """Validate the syntax of an address; nothing is looked up in DNS."""
    from email_validator import EmailNotValidError, validate_email

    domain = value.rpartition("@")[2].lower()
    reserved = domain == RESERVED_TEST_DOMAIN or domain.endswith(
        "." + RESERVED_TEST_DOMAIN)
    try:
        result = validate_email(value, check_deliverability=False,
                                test_environment=reserved)
    except EmailNotValidError as exc:
        reason = str(exc).rstrip(".")
        raise ValueError(f"{value!r} is not a valid email address: {reason}; "
                         "expected an address such as care@clinic.example.org") from None
    return result.normalized


TcpPort = Annotated[int, AfterValidator(_tcp_port)]
PositiveSeconds = Annotated[float, AfterValidator(_positive_seconds)]
EmailAddress = Annotated[str, AfterValidator(_email_address)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _one_line(value: str) -> str:
    """Reject control characters in a value that ends up in a mail header."""
    import re

    found = re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", value)
    if found:
        raise ValueError(f"contains the control character U+{ord(found[0]):04X} "
                         "(a line break or similar); write the value on one line")
    return value


# Text that goes into message headers (From, Subject), where CR or LF would
# start a new header.
HeaderText = Annotated[str, AfterValidator(_one_line)]


class Practice(_Strict):
    name: HeaderText
    postal_address: str
    timezone: TimeZoneName = "America/Chicago"
    website: str = "https://www.example.test"


class SenderIdentity(_Strict):
    address: EmailAddress
    name: HeaderText


class JsonlSink(_Strict):
    kind: Literal["jsonl"] = "jsonl"
    path: str = "cdp-events.jsonl"


def _https_or_loopback(url: str) -> str:
    """Reject a sink URL that would carry events in clear off this machine."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ValueError(f"sink URL {url!r} must use https "
                         "(plain http is allowed only on loopback)")
    return url


class HttpSinkSettings(_Strict):
    timeout_seconds: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=6, ge=1, le=20)
    max_backoff_seconds: float = Field(default=60.0, gt=0)

    @field_validator("url", check_fields=False)
    @classmethod
    def _safe_url(cls, value: str) -> str:
        return _https_or_loopback(value)


class SegmentSink(HttpSinkSettings):
    """Segment HTTP Tracking API; the write key is the Basic auth username."""

    kind: Literal["segment"]
    url: str = "https://api.segment.io/v1/batch"
    write_key_env: str = "CAREPOST_SEGMENT_WRITE_KEY"


class RudderStackSink(HttpSinkSettings):
    """RudderStack HTTP API: ``url`` is the data plane's ``/v1/batch``."""

    kind: Literal["rudderstack"]
    url: str
    write_key_env: str = "CAREPOST_RUDDERSTACK_WRITE_KEY"


class WebhookSink(HttpSinkSettings):
    """Any HTTPS endpoint; each request is signed with HMAC-SHA256."""

    kind: Literal["webhook"]
    url: str
    secret_env: str = "CAREPOST_SINK_WEBHOOK_SECRET"
    max_batch_bytes: int = Field(default=1_000_000, ge=1024)


Sink = Annotated[JsonlSink | SegmentSink | RudderStackSink | WebhookSink,
                 Field(discriminator="kind")]


class DkimSettings(_Strict):
    """DKIM signing: a PEM private key file published as ``selector._domainkey``."""

    key_file: str
    selector: str
    domain: str


class SmtpSettings(_Strict):
    """How to reach the relay or the MX hosts. There is no plaintext mode by design.

    ``mode: relay`` sends everything to ``host``:``port``; ``mode: mx`` looks
    up each recipient domain's MX hosts and ignores ``host``, ``port`` and
    ``tls`` (MX hosts take STARTTLS on port 25). ``unverified_mx`` decides
    what happens, in mx mode, when an MX host without an MTA-STS policy
    presents a certificate that does not verify: ``drop`` (the default) or
    ``encrypt`` (send over TLS 1.2+ anyway, recorded as unverified).
    """

    mode: Literal["relay", "mx"] = "relay"
    host: str = "127.0.0.1"
    port: TcpPort = 587
    tls: Literal["starttls", "implicit"] = "starttls"
    ca_file: str | None = None
    username: str | None = None
    password_env: str | None = None
    helo_name: str = "carepost.localhost"
    timeout_seconds: PositiveSeconds = 30.0
    connect_timeout_seconds: PositiveSeconds = 10.0
    message_timeout_seconds: PositiveSeconds = 120.0
    max_connections: int = Field(default=4, ge=1, le=64)
    max_connections_per_host: int = Field(default=4, ge=1, le=64)
    # Messages per second to one recipient domain (token bucket); None: no limit.
    rate_per_domain: float | None = Field(default=None, gt=0)
    rate_burst: int = Field(default=10, ge=1)
    unverified_mx: Literal["drop", "encrypt"] = "drop"
    # 4xx retries: exponential backoff from retry_base_seconds, capped at
    # retry_max_seconds; a run waits for retries at most retry_in_run_seconds
    # and leaves the rest deferred for the next run of the same date.
    retry_base_seconds: float = Field(default=30.0, gt=0)
    retry_max_seconds: float = Field(default=3600.0, gt=0)
    retry_in_run_seconds: float = Field(default=300.0, ge=0)
    dkim: DkimSettings | None = None

    def password(self) -> SecretStr | None:
        if not self.password_env:
            return None
        value = os.environ.get(self.password_env)
        return SecretStr(value) if value else None


class Tracking(_Strict):
    # Links in every message point here, so it must be https (or loopback).
    base_url: TlsUrl = "https://links.example.test"
    secret_env: str = "CAREPOST_TRACKING_SECRET"
    # Secrets of earlier rotations: links signed with them keep working.
    previous_secret_envs: list[str] = []


class Webhooks(_Strict):
    """Inbound CDP webhooks: the variables naming their shared secrets."""

    segment_secret_env: str = "CAREPOST_SEGMENT_WEBHOOK_SECRET"
    events_secret_env: str = "CAREPOST_EVENTS_WEBHOOK_SECRET"
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=1024 * 1024)
    # Largest age (or clock skew into the future) of a signed timestamp.
    tolerance_seconds: int = Field(default=300, ge=30, le=3600)


_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}


def _ledger_url(value: str) -> str:
    """Validate a ledger URL; a bare ``postgresql://`` gets the psycopg driver."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value)
    except ArgumentError:
        # The text is not echoed: a malformed URL may still carry a password.
        raise ValueError("the ledger URL is not a database URL; expected "
                         "postgresql://user@host:5432/carepost") from None
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    if url.drivername not in ("sqlite", "postgresql+psycopg"):
        raise ValueError(f"ledger URL scheme {url.drivername} is not supported; "
                         "use sqlite:///path or postgresql://user@host/db")
    if url.password is not None or "password" in url.query:
        raise ValueError("the ledger URL contains a password; remove it and set "
                         "PGPASSWORD or a ~/.pgpass file, which libpq reads")
    if "service" in url.query:
        # A pg_service.conf entry can name any host and password.
        raise ValueError("the ledger URL names a libpq service; write the host, "
                         "port and database in the URL instead")
    remote = [host for host in _ledger_hosts(url) if not _is_local_host(host)]
    if remote and url.query.get("sslmode") not in ("verify-ca", "verify-full"):
        raise ValueError(f"the ledger on {remote[0]} would be reached without a "
                         "verified TLS connection; add ?sslmode=verify-full")
    return url.render_as_string(hide_password=False)


def _ledger_hosts(url: Any) -> list[str]:
    """Return every host libpq may connect to: the URL's and its query's.

    libpq also reads ``host`` and ``hostaddr`` from the query string, as
    comma-separated lists, and they take precedence over the URL's host.
    """
    hosts = [url.host] if url.host else []
    for key in ("host", "hostaddr"):
        values = url.query.get(key, ())
        for value in (values,) if isinstance(values, str) else values:
            hosts.extend(part.strip() for part in value.split(",") if part.strip())
    return hosts


def _is_local_host(host: str) -> bool:
    # A path is a Unix socket folder on this machine.
    return host in _LOOPBACK_HOSTS or host.startswith("/")


class LedgerSettings(_Strict):
    """The ledger's database; a ``url`` of None is SQLite in the state folder."""

    url: Annotated[str, AfterValidator(_ledger_url)] | None = None


class Settings(_Strict):
    root: Path = Path(".")
    state_dir: str = ".carepost"
    practice: Practice
    sender: SenderIdentity
    # ``source`` is the one-export shape of older files; ``sources`` names
    # each CDP source (files, fhir, segment). named_sources() merges both.
    source: FileSource | None = None
    sources: dict[str, Source] = {}
    sink: Sink = JsonlSink()
    smtp: SmtpSettings = SmtpSettings()
    tracking: Tracking = Tracking()
    webhooks: Webhooks = Webhooks()
    campaigns_dir: str = "campaigns"
    segments_dir: str = "segments/library"
    templates_dir: str = "templates/library"
    batch_size: int = Field(default=500, ge=1, le=5000)
    retention: RetentionSettings = RetentionSettings()
    ledger: LedgerSettings = LedgerSettings()

    def named_sources(self) -> dict[str, Source]:
        """Return every configured source by name, the legacy one as "export"."""
        named: dict[str, Source] = dict(self.sources)
        if self.source is not None:
            if LEGACY_SOURCE_NAME in named:
                raise ConfigError(
                    f"both source: and sources.{LEGACY_SOURCE_NAME} are set",
                    hint="move source: under sources: with another name",
                )
            named[LEGACY_SOURCE_NAME] = self.source
        return named

    def path(self, relative: str) -> Path:
        candidate = Path(relative)
        return candidate if candidate.is_absolute() else self.root / candidate

    @property
    def state_path(self) -> Path:
        """Return the state folder, created private to the OS user (0700).

        It contains the warehouse and the ledger, so other local users must
        not read it, whatever the umask gave the files inside.
        """
        path = self.path(self.state_dir)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.stat().st_mode & 0o077:
            path.chmod(0o700)
        return path

    @property
    def ledger_url(self) -> str:
        if self.ledger.url is not None:
            return self.ledger.url
        return f"sqlite:///{self.state_path / 'ledger.db'}"

    @property
    def warehouse_path(self) -> Path:
        return self.state_path / "warehouse.duckdb"

    def secret(self, env_name: str) -> bytes:
        """Return the secret from ``env_name`` or the state folder's key file."""
        value = os.environ.get(env_name)
        if value:
            return value.encode()
        key_file = self.state_path / f"{env_name.lower()}.key"
        if not key_file.exists():
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
        return key_file.read_text().strip().encode()

    @property
    def address_hash_key(self) -> bytes:
        return self.secret("CAREPOST_ADDRESS_HASH_KEY")

    @property
    def tracking_secret(self) -> bytes:
        return self.secret(self.tracking.secret_env)

    @property
    def tracking_keys(self) -> dict[str, bytes]:
        """Return token keys by key id, the current secret first.

        A key id is a short digest of its secret, so a rotated secret gets
        a new id and tokens signed with an older secret still verify.
        """
        secrets_in_order = [self.tracking_secret]
        for env_name in self.tracking.previous_secret_envs:
            value = os.environ.get(env_name)
            if not value:
                raise ConfigError(
                    f"tracking.previous_secret_envs names {env_name}, "
                    "which is not set",
                    hint=f"set {env_name} to the retired secret or remove it")
            secrets_in_order.append(value.encode())
        return {"k" + hashlib.sha256(secret).hexdigest()[:8]: secret
                for secret in secrets_in_order}


def load_settings(path: Path | str | None = None) -> Settings:
    """Load and validate ``carepost.yaml`` (default: the current folder's)."""
    config_path = Path(path or os.environ.get("CAREPOST_CONFIG", CONFIG_FILE))
    if not config_path.exists():
        raise ConfigError(
            f"configuration file {config_path} not found",
            hint="run carepost from the project folder or set CAREPOST_CONFIG",
        )
    document = load_yaml_file(config_path)
    raw = document.data or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_path}: expected a mapping at the top level",
                          hint="start the file with keys such as practice: and sender:")
    raw.setdefault("root", config_path.resolve().parent)
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            describe_validation_error(exc, document, "configuration")) from None
