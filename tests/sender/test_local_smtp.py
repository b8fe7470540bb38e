"""The demo's local STARTTLS server: verified delivery into a Maildir, quietly."""

from __future__ import annotations

import mailbox
import socket
import ssl
import warnings
from pathlib import Path

import pytest

from carepost.connectors.local_smtp import LocalTlsSmtpServer
from carepost.connectors.smtp import TlsSender
from carepost.core.settings import SmtpSettings
from carepost.core.states import DeliveryState

from .servers import build_message, read_reply

RECIPIENT = "sam@example.org"


async def test_local_server_delivers_to_maildir(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    maildir = tmp_path / "mail"

    with LocalTlsSmtpServer(maildir) as server:
        settings = SmtpSettings(host=server.host, port=server.port, tls="starttls")
        async with TlsSender(settings, ca_file=server.ca_file) as sender:
            outcome = await sender.send(
                envelope_from="clinic@example.org",
                recipient=RECIPIENT,
                data=build_message(RECIPIENT, body="Stored in the Maildir"),
                profile_id="p-1",
            )
        received = server.messages_received

    assert outcome.state is DeliveryState.SENT
    assert outcome.tls_version in {"TLSv1.2", "TLSv1.3"}
    assert received == 1
    stored = [message.get_payload() for message in mailbox.Maildir(maildir)]
    assert [text.strip() for text in stored] == ["Stored in the Maildir"]
    output = capfd.readouterr()
    assert output.out == ""
    assert output.err == ""


def test_local_server_picks_free_port(tmp_path: Path) -> None:
    with LocalTlsSmtpServer(tmp_path / "a") as first:
        with LocalTlsSmtpServer(tmp_path / "b") as second:
            assert first.port > 0
            assert second.port > 0
            assert first.port != second.port


def test_local_server_ca_file_lifecycle(tmp_path: Path) -> None:
    server = LocalTlsSmtpServer(tmp_path / "mail")
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.ca_file

    server.start()
    ca_file = server.ca_file
    assert ca_file.read_text().startswith("-----BEGIN CERTIFICATE-----")
    with pytest.raises(RuntimeError, match="already running"):
        server.start()
    server.stop()

    assert not ca_file.exists()
    assert (tmp_path / "mail" / "new").is_dir()
    server.stop()


def test_local_server_requires_starttls(tmp_path: Path) -> None:
    with LocalTlsSmtpServer(tmp_path / "mail") as server:
        with socket.create_connection((server.host, server.port), timeout=5) as raw:
            read_reply(raw)
            raw.sendall(b"EHLO probe.example.test\r\n")
            ehlo = read_reply(raw)
            raw.sendall(b"MAIL FROM:<clinic@example.org>\r\n")
            mail = read_reply(raw)
        received = server.messages_received

    assert b"250-STARTTLS" in ehlo
    assert mail.startswith(b"530")
    assert received == 0


def test_local_server_rejects_tls11(tmp_path: Path) -> None:
    with LocalTlsSmtpServer(tmp_path / "mail") as server:
        client = ssl.create_default_context(cafile=str(server.ca_file))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            client.minimum_version = ssl.TLSVersion.TLSv1
            client.maximum_version = ssl.TLSVersion.TLSv1_1
        client.set_ciphers("DEFAULT:@SECLEVEL=0")

        with socket.create_connection((server.host, server.port), timeout=5) as raw:
            read_reply(raw)
            raw.sendall(b"EHLO probe.example.test\r\n")
            read_reply(raw)
            raw.sendall(b"STARTTLS\r\n")
            assert read_reply(raw).startswith(b"220")
            with pytest.raises(ssl.SSLError):
                client.wrap_socket(raw, server_hostname="localhost")


async def test_local_server_logs_no_addresses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")

    with LocalTlsSmtpServer(tmp_path / "mail") as server:
        settings = SmtpSettings(host=server.host, port=server.port, tls="starttls")
        async with TlsSender(settings, ca_file=server.ca_file) as sender:
            outcome = await sender.send(
                envelope_from="clinic@example.org",
                recipient=RECIPIENT,
                data=build_message(RECIPIENT),
                profile_id="p-1",
            )

    assert outcome.state is DeliveryState.SENT
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "example.org" not in logged
    assert "p-1" in logged
