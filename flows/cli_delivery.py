"""``carepost tls-check``, ``carepost send-test`` and ``carepost deliveries ...``.

- ``tls-check DOMAIN_OR_HOST[:PORT]`` checks TLS without sending mail and
  stores the result as the domain's TLS status. A bare name is a recipient
  domain: its first MX host (or the name itself when it has no MX) is
  checked on port 25, with its MTA-STS mode. ``HOST:PORT`` checks that
  host directly. Exit code 1 when the host lacks verified TLS 1.2+.
- ``send-test --to ADDRESS --host H --port P`` sends one synthetic message
  (no patient data) through the TLS-exclusive sender, prints the outcome,
  TLS version and cipher, and appends an ``smtp.send_test`` audit entry.
- ``deliveries ambiguous`` lists deliveries left in ``sending``: the
  server may have the message, so they are never resent automatically.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from carepost.core.errors import CarepostError
from carepost.core.settings import CONFIG_FILE, Settings
from carepost.flows.cli_common import (
    ConfigOption,
    JsonOption,
)
from carepost.flows.cli_common import (
    fail as _fail,
)
from carepost.flows.cli_common import (
    settings_or_exit as _settings,
)

if TYPE_CHECKING:
    from carepost.connectors.mx import MxResolver
    from carepost.connectors.smtp_envelope import EnvelopeError
    from carepost.connectors.tls_status import DomainStatus, TlsStatusStore

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  pretty_exceptions_show_locals=False,
                  help="Report deliveries that need an operator.")

CaOption = Annotated[Optional[Path], typer.Option(
    "--ca", help="PEM bundle of CAs to trust instead of the system store.")]

MX_PORT = 25

_TO_FIX = "pass one plain address such as name@example.org (nothing was sent)"


def _split_target(target: str) -> tuple[str, int | None]:
    name, colon, port = target.rpartition(":")
    if not colon:
        return target, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        typer.echo(f"error: port {port!r} in {target!r} is not a number from 1 to "
                   "65535; use HOST:PORT such as mail.example.org:587", err=True)
        raise typer.Exit(2)
    return name, int(port)


async def check_target(name: str, port: int | None, *, ca_file: Path | None,
                       resolver: MxResolver, store: TlsStatusStore,
                       mx_ports: Mapping[str, int] | None = None,
                       mta_sts_https_port: int = 443) -> DomainStatus:
    """Check a host (``port`` given) or a recipient domain and store its status.

    ``mx_ports`` and ``mta_sts_https_port`` exist for tests only.
    """
    from carepost.connectors.mta_sts import MtaStsFetcher
    from carepost.connectors.mx import to_ascii_domain
    from carepost.connectors.smtp_probe import probe_host
    from carepost.connectors.smtp_tls import build_client_context

    domain = to_ascii_domain(name)
    if port is not None:
        status = await probe_host(domain, domain, port, ca_file=ca_file)
        store.record(status)
        return status

    route = await resolver.route(domain)
    fetcher = MtaStsFetcher(resolver, store.policy_cache(),
                            context=build_client_context(ca_file),
                            https_port=mta_sts_https_port)
    policy = await fetcher.policy_for(domain)
    host = route.hosts[0].name
    addresses = await resolver.addresses(host)
    status = await probe_host(
        domain, host, (mx_ports or {}).get(host, MX_PORT),
        address=addresses[0] if addresses else host, ca_file=ca_file,
        mta_sts_mode=policy.mode.value if policy is not None else None)
    store.record(status)
    return status


def tls_check(
    target: Annotated[str, typer.Argument(
        metavar="DOMAIN_OR_HOST[:PORT]",
        help="A recipient domain (its MX is checked on port 25) or HOST:PORT.")],
    ca: CaOption = None,
    config: ConfigOption = Path(CONFIG_FILE),
    as_json: JsonOption = False,
) -> None:
    """Check an MX host's or relay's TLS without sending mail; store the status."""
    from carepost.connectors.mx import MxResolver
    from carepost.connectors.tls_status import TlsStatusStore
    from carepost.ledger import Ledger

    settings = _settings(config)
    name, port = _split_target(target)
    ledger = Ledger(settings.ledger_url)
    try:
        status = asyncio.run(check_target(
            name, port, ca_file=ca, resolver=MxResolver(),
            store=TlsStatusStore(ledger.engine)))
    except (CarepostError, ValueError) as exc:
        _fail(exc if isinstance(exc, CarepostError) else CarepostError(str(exc)))
    finally:
        ledger.close()
    _print_status(status, as_json)
    if not status.supports_tls:
        raise typer.Exit(1)


def _print_status(status: DomainStatus, as_json: bool) -> None:
    values = status.as_dict()
    if as_json:
        typer.echo(json.dumps(values))
        return
    for key, value in values.items():
        typer.echo(f"{key:<17} {'-' if value is None else value}")


def _test_message(sender: str, recipient: str) -> bytes:
    """Build the synthetic message; its To is the address the envelope carries.

    The default policy would write a non-ASCII local part or an IDN domain
    as RFC 2047 encoded-words, which RFC 2047 section 5 forbids in an
    address and which the envelope check rightly reads as a different
    address. The To header instead carries the domain in ASCII (as the
    envelope does) and the local part in UTF-8 (RFC 6532, sent with
    SMTPUTF8 when it is not ASCII).
    """
    from carepost.connectors.smtp_envelope import wire_address

    try:
        to_address, needs_utf8 = wire_address(recipient)
    except ValueError:
        # An invalid IDN: the envelope check rejects it before sending.
        to_address, needs_utf8 = recipient, not recipient.isascii()
    message = EmailMessage(policy=SMTPUTF8 if needs_utf8 else SMTP)
    message["From"] = f"carepost TLS test <{sender}>"
    message["To"] = to_address
    message["Subject"] = "carepost TLS test message"
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    message.set_content("This test message from carepost checks TLS delivery.\n"
                        "It contains no patient data.\n")
    return message.as_bytes()


def send_test(
    to: Annotated[str, typer.Option("--to", help="Recipient address of the test.")],
    host: Annotated[str, typer.Option("--host", help="SMTP server host name.")],
    port: Annotated[int, typer.Option(
        "--port", help="SMTP port: 465 uses implicit TLS, others STARTTLS.")] = 587,
    ca: CaOption = None,
    config: ConfigOption = Path(CONFIG_FILE),
    as_json: JsonOption = False,
) -> None:
    """Send one synthetic message over verified TLS and print how it ended."""
    from carepost.connectors.smtp import SendOutcome, TlsSender
    from carepost.connectors.smtp_envelope import EnvelopeError
    from carepost.core.settings import SmtpSettings

    _check_to_option(to)
    settings = _settings(config)
    smtp = SmtpSettings(host=host, port=port,
                        tls="implicit" if port == 465 else "starttls",
                        ca_file=str(ca) if ca else None,
                        helo_name=settings.smtp.helo_name,
                        timeout_seconds=settings.smtp.timeout_seconds)

    async def send() -> SendOutcome:
        async with TlsSender(smtp, password=None) as sender:
            return await sender.send(
                envelope_from=settings.sender.address, recipient=to,
                data=_test_message(settings.sender.address, to), profile_id="send-test")

    try:
        outcome = asyncio.run(send())
    except EnvelopeError as exc:
        _fail(_envelope_problem(exc))
    except CarepostError as exc:
        _fail(exc)
    result = {"state": str(outcome.state), "reason": outcome.reason,
              "smtp_code": outcome.smtp_code, "tls_version": outcome.tls_version,
              "tls_cipher": outcome.tls_cipher, "cert_sha256": outcome.cert_sha256,
              "host": host, "port": port}
    _audit_send_test(settings, result)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        for key, value in result.items():
            typer.echo(f"{key:<12} {'-' if value is None else value}")
    if outcome.state != "sent":
        raise typer.Exit(1)


def _check_to_option(to: str) -> None:
    """Reject a --to value with CR, LF or another unprintable character.

    Such a value would end the SMTP command or header line early. The
    error never repeats the value.
    """
    if not to.isprintable():
        _fail(f"--to: the address contains a control character (CR, LF or "
              f"another unprintable one); {_TO_FIX}")


def _envelope_problem(error: EnvelopeError) -> str:
    """Reword an envelope check of the test message in terms of its options."""
    if error.problem.startswith("envelope sender"):
        return (f"sender.address in carepost.yaml: {error.problem}; correct it "
                "there (nothing was sent)")
    return f"--to: {error.problem}; {_TO_FIX}"


def _audit_send_test(settings: Settings, result: dict[str, Any]) -> None:
    try:
        from carepost.ledger.audit import AuditLog
    except ImportError:  # an installation without the audit log
        return
    audit = AuditLog(settings.ledger_url)
    try:
        details = {key: value for key, value in result.items()
                   if key not in ("host", "port")}
        audit.append(actor=None, action="smtp.send_test",
                     target=f"{result['host']}:{result['port']}", details=details)
    finally:
        audit.close()


@app.command()


def ambiguous(
    campaign: Annotated[Optional[str], typer.Option(
        "--campaign", help="Only this campaign's deliveries.")] = None,
    config: ConfigOption = Path(CONFIG_FILE),
    as_json: JsonOption = False,
) -> None:
    """List deliveries whose outcome is unknown (left in 'sending'); never resent."""
    from carepost.ledger import Ledger

    settings = _settings(config)
    ledger = Ledger(settings.ledger_url)
    try:
        rows = ledger.ambiguous(campaign)
    finally:
        ledger.close()
    listed = [{"delivery_id": row.id, "campaign": row.campaign, "run": row.run_key,
               "profile_id": row.profile_id, "message_id": row.message_id,
               "attempts": row.attempts, "since": row.updated_at.isoformat()}
              for row in rows]
    if as_json:
        typer.echo(json.dumps(listed))
        return
    if not listed:
        typer.echo("no deliveries with an unknown outcome")
    for item in listed:
        typer.echo(f"{item['delivery_id']}  {item['campaign']}  {item['run']}  "
                   f"profile {item['profile_id']}  {item['message_id']}  "
                   f"since {item['since']}")
