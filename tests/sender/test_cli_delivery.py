"""``carepost tls-check``, ``send-test`` and ``deliveries ambiguous``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from carepost.connectors.mx import MxResolver
from carepost.connectors.tls_status import TlsStatusStore
from carepost.core.states import Purpose
from carepost.flows.cli import app
from carepost.flows.cli_delivery import check_target
from carepost.ledger import Ledger
from carepost.ledger.audit import AuditLog

from .conftest import MxServers
from .dns_server import DnsServer
from .servers import Certificates, Script

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "carepost.yaml"
    path.write_text(
        "practice: {name: Test Clinic, postal_address: 1 Main St}\n"
        "sender: {address: clinic@example.org, name: Test Clinic}\n"
        f"state_dir: {tmp_path / 'state'}\n")
    return path


def ledger_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state' / 'ledger.db'}"


def test_tls_check_good_host(start_server, certificates: Certificates,
                             config: Path, tmp_path: Path) -> None:
    server = start_server()

    result = runner.invoke(app, ["tls-check", f"localhost:{server.port}", "--ca",
                                 str(certificates.ca_file), "--config", str(config),
                                 "--json"])

    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["supports_tls"] is True
    assert status["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert status["cert_verified"] is True
    assert "MAIL" not in server.verbs()
    stored = TlsStatusStore(Ledger(ledger_url(tmp_path)).engine).get("localhost")
    assert stored is not None and stored.supports_tls


def test_tls_check_without_starttls(start_server, certificates: Certificates,
                                    config: Path) -> None:
    server = start_server(Script(offer_starttls=False))

    result = runner.invoke(app, ["tls-check", f"localhost:{server.port}", "--ca",
                                 str(certificates.ca_file), "--config", str(config),
                                 "--json"])

    assert result.exit_code == 1
    status = json.loads(result.output)
    assert status["starttls_offered"] is False
    assert status["supports_tls"] is False
    assert "MAIL" not in server.verbs()


def test_tls_check_wrong_certificate_reports_version(
    start_server, certificates: Certificates, config: Path
) -> None:
    server = start_server(certificate="wrong_host")

    result = runner.invoke(app, ["tls-check", f"localhost:{server.port}", "--ca",
                                 str(certificates.ca_file), "--config", str(config),
                                 "--json"])

    status = json.loads(result.output)
    assert result.exit_code == 1
    assert status["cert_verified"] is False
    assert status["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert "certificate verification failed" in status["reason"]
    assert "MAIL" not in server.verbs()


def test_tls_check_invalid_port(config: Path) -> None:
    result = runner.invoke(app, ["tls-check", "mail.example.org:smtp",
                                 "--config", str(config)])

    assert result.exit_code == 2
    assert "not a number" in result.output


async def test_check_domain_uses_first_mx(dns_server: DnsServer,
                                          mx_servers: MxServers,
                                          certificates: Certificates) -> None:
    setup = mx_servers({"mx1.clinic.example.test": None,
                        "mx2.clinic.example.test": None})
    dns_server.add_mx("clinic.example.test", (10, "mx1.clinic.example.test"),
                      (20, "mx2.clinic.example.test"))
    store = TlsStatusStore()

    status = await check_target("clinic.example.test", None,
                                ca_file=certificates.ca_file,
                                resolver=MxResolver(dns_server.resolver()),
                                store=store, mx_ports=setup.ports)

    assert status.mx_host == "mx1.clinic.example.test"
    assert status.supports_tls
    assert status.mta_sts_mode is None
    assert store.get("clinic.example.test") == status
    assert setup.servers["mx2.clinic.example.test"].sessions == 0


def test_send_test_reports_tls_and_audits(start_server, certificates: Certificates,
                                          config: Path, tmp_path: Path) -> None:
    server = start_server()

    result = runner.invoke(app, ["send-test", "--to", "ops@example.org", "--host",
                                 "localhost", "--port", str(server.port), "--ca",
                                 str(certificates.ca_file), "--config", str(config),
                                 "--json"])

    assert result.exit_code == 0, result.output
    outcome = json.loads(result.output)
    assert outcome["state"] == "sent"
    assert outcome["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert outcome["tls_cipher"]
    assert len(server.messages) == 1
    assert b"no patient data" in server.messages[0]
    with AuditLog(ledger_url(tmp_path)) as audit:
        entry = audit.last(action="smtp.send_test", target=f"localhost:{server.port}")
    assert entry is not None
    assert "ops@example.org" not in json.dumps(entry.details)


def test_send_test_without_starttls_fails(start_server, certificates: Certificates,
                                          config: Path) -> None:
    server = start_server(Script(offer_starttls=False))

    result = runner.invoke(app, ["send-test", "--to", "ops@example.org", "--host",
                                 "localhost", "--port", str(server.port), "--ca",
                                 str(certificates.ca_file), "--config", str(config),
                                 "--json"])

    assert result.exit_code == 1
    assert json.loads(result.output)["state"] == "dropped_no_tls"
    assert "MAIL" not in server.verbs()


def test_deliveries_ambiguous_lists_sending(config: Path, tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    ledger = Ledger(ledger_url(tmp_path))
    claim = ledger.claim(campaign="checkup_reminder", run_key="2024-02-15",
                         profile_id="p-7", purpose=Purpose.CARE, message_id="<m@x>")
    ledger.begin_send(claim.delivery_id)
    ledger.close()

    result = runner.invoke(app, ["deliveries", "ambiguous", "--config", str(config),
                                 "--json"])

    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert [item["profile_id"] for item in listed] == ["p-7"]
    assert listed[0]["delivery_id"] == claim.delivery_id
