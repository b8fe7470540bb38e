"""The sender against a real Postfix on 127.0.0.1, started by .ci/run.

``tests/postfix/setup.sh`` runs Postfix with STARTTLS required on port
2525 and without TLS on port 2526. Without that Postfix (the normal case
on a developer machine) every test here is skipped.
"""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import pytest

from carepost.connectors.smtp import SendOutcome, TlsSender
from carepost.core.settings import SmtpSettings
from carepost.core.states import DeliveryState

pytestmark = pytest.mark.postfix

STATE = Path("/etc/postfix/carepost-test")
CA_FILE = STATE / "ca.pem"
MAILDIR = Path("/var/mail/vhosts/carepost.test/inbox")
LOG = Path("/var/log/postfix-carepost.log")
TLS_PORT = 2525
PLAIN_PORT = 2526
RECIPIENT = "patient@carepost.test"
SENDER = "clinic@example.org"


def _postfix_running() -> bool:
    if not CA_FILE.is_file() or not LOG.exists():
        return False
    try:
        with socket.create_connection(("127.0.0.1", TLS_PORT), timeout=1):
            return True
    except OSError:
        return False


if not _postfix_running():
    pytest.skip("Postfix is not running on 127.0.0.1:2525 (tests/postfix/setup.sh "
                "starts it; .ci/run does this in CI)", allow_module_level=True)


def message(token: str) -> bytes:
    return (f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: Postfix test\r\n"
            f"Message-ID: <{token}@example.org>\r\n\r\ncheck {token}\r\n").encode()


async def send(port: int, token: str) -> SendOutcome:
    settings = SmtpSettings(host="localhost", port=port, ca_file=str(CA_FILE),
                            timeout_seconds=10)
    async with TlsSender(settings) as sender:
        return await sender.send(envelope_from=SENDER, recipient=RECIPIENT,
                                 data=message(token), profile_id="p-postfix")


def delivered(token: str, timeout_seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        for path in (MAILDIR / "new").glob("*"):
            if token.encode() in path.read_bytes():
                return True
        time.sleep(0.2)
    return False


def new_log(offset: int, service: str) -> list[str]:
    with LOG.open("rb") as handle:
        handle.seek(offset)
        text = handle.read().decode(errors="replace")
    return [line for line in text.splitlines() if f"postfix/{service}/smtpd" in line]


async def test_postfix_tls_port_gets_message() -> None:
    token = uuid.uuid4().hex
    offset = LOG.stat().st_size

    outcome = await send(TLS_PORT, token)

    assert outcome.state is DeliveryState.SENT
    assert outcome.tls_version in ("TLSv1.2", "TLSv1.3")
    assert delivered(token)
    lines = new_log(offset, "tls")
    assert any("TLS connection established" in line for line in lines)


async def test_postfix_plain_port_gets_no_mail() -> None:
    token = uuid.uuid4().hex
    offset = LOG.stat().st_size

    outcome = await send(PLAIN_PORT, token)
    time.sleep(0.5)  # let Postfix flush its log lines
    lines = new_log(offset, "plain")

    assert outcome.state is DeliveryState.DROPPED_NO_TLS
    assert outcome.reason == "server did not offer STARTTLS"
    assert any("EHLO" in line for line in lines)
    assert not any("MAIL FROM" in line.upper() for line in lines)
    assert not any("RCPT" in line.upper() for line in lines)
    assert not delivered(token, timeout_seconds=1.0)
