"""TLS policy of the sender: required, verified, 1.2 or newer, never in clear."""

from __future__ import annotations

import hashlib
import socket
import ssl
import warnings

import pytest
from pydantic import SecretStr

from carepost.connectors.smtp import SendOutcome, TlsSender
from carepost.connectors.smtp_tls import build_client_context, is_accepted_version
from carepost.core.errors import ConfigError
from carepost.core.settings import SmtpSettings
from carepost.core.states import DeliveryState

from .conftest import SettingsFor, StartServer
from .servers import RecordingServer, Script, build_message, read_reply

RECIPIENT = "sam@example.org"
SENDER = "clinic@example.org"
BODY = "Your flu shot is due."


async def send_one(settings: SmtpSettings, **sender_options: object) -> SendOutcome:
    sender = TlsSender(settings, **sender_options)  # type: ignore[arg-type]
    async with sender:
        return await sender.send(
            envelope_from=SENDER,
            recipient=RECIPIENT,
            data=build_message(RECIPIENT, BODY),
            profile_id="p-1",
        )


def assert_nothing_sent_in_clear(server: RecordingServer) -> None:
    """Check that only EHLO and STARTTLS (or nothing) arrived before TLS."""
    clear_verbs = {c.verb for c in server.commands if not c.encrypted}
    assert clear_verbs <= {"EHLO", "STARTTLS"}
    assert b"MAIL" not in bytes(server.plaintext).upper()
    assert RECIPIENT.encode() not in bytes(server.plaintext)
    assert BODY.encode() not in bytes(server.plaintext)


def assert_dropped_before_mail(outcome: SendOutcome, server: RecordingServer) -> None:
    assert outcome.state is DeliveryState.DROPPED_NO_TLS
    assert outcome.reason
    assert "MAIL" not in server.verbs()
    assert "RCPT" not in server.verbs()
    assert "AUTH" not in server.verbs()
    assert server.messages == []
    assert_nothing_sent_in_clear(server)


async def test_starttls_good_server_sends(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = start_server()

    outcome = await send_one(settings_for(server))

    assert outcome.state is DeliveryState.SENT
    assert outcome.smtp_code == 250
    assert outcome.reason is None
    assert server.verbs()[:3] == ["EHLO", "STARTTLS", "EHLO"]
    mail = next(c for c in server.commands if c.verb == "MAIL")
    assert mail.encrypted
    assert server.tls_versions == [outcome.tls_version]
    assert len(server.messages) == 1
    assert BODY.encode() in server.messages[0]
    assert_nothing_sent_in_clear(server)


async def test_outcome_records_tls_details(
    start_server: StartServer, settings_for: SettingsFor, certificates
) -> None:
    server = start_server()

    outcome = await send_one(settings_for(server))

    expected_fingerprint = hashlib.sha256(
        ssl.PEM_cert_to_DER_cert(certificates.good.cert_chain_pems[0].bytes().decode())
    ).hexdigest()
    assert outcome.tls_version == "TLSv1.3"
    assert outcome.tls_cipher
    assert outcome.tls_cipher.startswith("TLS_")
    assert outcome.cert_sha256 == expected_fingerprint


async def test_implicit_tls_sends(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = start_server(implicit_tls=True)

    outcome = await send_one(settings_for(server, tls="implicit"))

    assert outcome.state is DeliveryState.SENT
    assert outcome.tls_version == "TLSv1.3"
    assert "STARTTLS" not in server.verbs()
    assert all(command.encrypted for command in server.commands)
    assert server.plaintext == bytearray()
    assert len(server.messages) == 1


async def test_implicit_tls_wrong_host_drops(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = start_server(certificate="wrong_host", implicit_tls=True)

    outcome = await send_one(settings_for(server, tls="implicit"))

    assert outcome.state is DeliveryState.DROPPED_NO_TLS
    assert outcome.reason is not None
    assert "certificate verification failed" in outcome.reason
    assert server.commands == []
    assert server.messages == []


async def test_no_starttls_offered_drops(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = start_server(Script(offer_starttls=False))

    outcome = await send_one(settings_for(server))

    assert_dropped_before_mail(outcome, server)
    assert outcome.reason == "server did not offer STARTTLS"
    assert outcome.smtp_code is None
    assert server.verbs() == ["EHLO"]


async def test_no_starttls_never_authenticates_in_clear(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    script = Script(offer_starttls=False, credentials=("relay-user", "s3cret-pw"))
    server = start_server(script)
    settings = settings_for(server, username="relay-user")

    outcome = await send_one(settings, password=SecretStr("s3cret-pw"))

    assert_dropped_before_mail(outcome, server)
    assert server.logins == []
    assert b"s3cret" not in bytes(server.plaintext)


async def test_starttls_rejected_454_drops(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    script = Script(starttls_reply="454 4.7.0 TLS not available, try later")
    server = start_server(script)

    outcome = await send_one(settings_for(server))

    assert_dropped_before_mail(outcome, server)
    assert outcome.smtp_code == 454
    assert outcome.reason == "STARTTLS rejected: 454 4.7.0"
    assert server.verbs() == ["EHLO", "STARTTLS"]


async def test_legacy_tls_only_server_drops(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = start_server(legacy_tls_only=True)

    outcome = await send_one(settings_for(server))

    # The local OpenSSL (3.0 here) serves TLS 1.1 at security level 0, which
    # test_legacy_server_really_serves_tls11 confirms, so this is a real
    # version mismatch and not a server that cannot start TLS at all.
    assert_dropped_before_mail(outcome, server)
    assert outcome.reason is not None
    assert outcome.reason.startswith("TLS handshake failed")
    assert server.tls_sessions == 0
    assert server.tls_versions == []


def test_legacy_server_really_serves_tls11(
    start_server: StartServer, certificates
) -> None:
    server = start_server(legacy_tls_only=True)
    client = ssl.create_default_context(cafile=str(certificates.ca_file))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client.minimum_version = ssl.TLSVersion.TLSv1
    client.set_ciphers("DEFAULT:@SECLEVEL=0")

    with socket.create_connection((server.host, server.port), timeout=5) as raw:
        read_reply(raw)
        raw.sendall(b"EHLO probe.example.test\r\n")
        read_reply(raw)
        raw.sendall(b"STARTTLS\r\n")
        assert read_reply(raw).startswith(b"220")
        with client.wrap_socket(raw, server_hostname="localhost") as tls:
            version = tls.version()

    assert version == "TLSv1.1"


@pytest.mark.parametrize(
    ("certificate", "host", "expected"),
    [
        ("wrong_host", "localhost", "Hostname mismatch"),
        ("wrong_host", "127.0.0.1", "IP address mismatch"),
        ("expired", "127.0.0.1", "certificate has expired"),
        ("untrusted", "127.0.0.1", "unable to get local issuer certificate"),
    ],
)
async def test_unverified_certificate_drops(
    start_server: StartServer,
    settings_for: SettingsFor,
    certificate: str,
    host: str,
    expected: str,
) -> None:
    server = start_server(certificate=certificate)

    outcome = await send_one(settings_for(server, host=host))

    assert_dropped_before_mail(outcome, server)
    assert outcome.reason is not None
    assert outcome.reason.startswith("certificate verification failed")
    assert expected in outcome.reason


async def test_system_store_rejects_test_ca(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = start_server()

    outcome = await send_one(settings_for(server, ca_file=None))

    assert_dropped_before_mail(outcome, server)


async def test_auth_only_after_tls(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = start_server(Script(credentials=("relay-user", "s3cret-pw")))
    settings = settings_for(server, username="relay-user")

    outcome = await send_one(settings, password=SecretStr("s3cret-pw"))

    assert outcome.state is DeliveryState.SENT
    verbs = server.verbs()
    assert verbs.index("STARTTLS") < verbs.index("AUTH") < verbs.index("MAIL")
    assert all(c.encrypted for c in server.commands if c.verb == "AUTH")
    assert server.logins == [("relay-user", "s3cret-pw", True)]
    assert b"s3cret" not in bytes(server.plaintext)


async def test_auth_rejected_defers(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = start_server(Script(credentials=("relay-user", "right-pw")))
    settings = settings_for(server, username="relay-user")

    outcome = await send_one(settings, password=SecretStr("wrong-pw"))

    assert outcome.state is DeliveryState.DEFERRED
    assert outcome.smtp_code == 535
    assert "MAIL" not in server.verbs()


async def test_password_read_from_environment(
    start_server: StartServer,
    settings_for: SettingsFor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CAREPOST_TEST_SMTP_PASSWORD", "env-pw")
    server = start_server(Script(credentials=("relay-user", "env-pw")))
    settings = settings_for(
        server, username="relay-user", password_env="CAREPOST_TEST_SMTP_PASSWORD"
    )

    outcome = await send_one(settings)

    assert outcome.state is DeliveryState.SENT
    assert server.logins == [("relay-user", "env-pw", True)]


def test_password_never_printed(ca_file) -> None:
    settings = SmtpSettings(username="relay-user", ca_file=str(ca_file))

    sender = TlsSender(settings, password=SecretStr("s3cret-pw"))

    assert "s3cret" not in repr(sender)
    assert "s3cret" not in str(sender)
    assert "s3cret" not in repr(vars(sender))


def test_plain_string_password_rejected(ca_file) -> None:
    settings = SmtpSettings(username="relay-user", ca_file=str(ca_file))

    with pytest.raises(ConfigError, match="SecretStr") as raised:
        TlsSender(settings, password="s3cret-pw")  # type: ignore[arg-type]

    assert "s3cret" not in str(raised.value)


def test_username_without_password_rejected(ca_file) -> None:
    settings = SmtpSettings(
        username="relay-user",
        password_env="CAREPOST_UNSET_VARIABLE",
        ca_file=str(ca_file),
    )

    with pytest.raises(ConfigError, match="CAREPOST_UNSET_VARIABLE"):
        TlsSender(settings)


@pytest.mark.parametrize("mode", ["none", "plain", "opportunistic", ""])
def test_unknown_tls_mode_rejected(mode: str, ca_file) -> None:
    settings = SmtpSettings.model_construct(
        **{**SmtpSettings(ca_file=str(ca_file)).model_dump(), "tls": mode}
    )

    with pytest.raises(ConfigError, match="no plaintext mode"):
        TlsSender(settings)


def test_missing_ca_file_rejected(tmp_path) -> None:
    settings = SmtpSettings(ca_file=str(tmp_path / "absent.pem"))

    with pytest.raises(ConfigError, match="absent.pem not found"):
        TlsSender(settings)


def test_client_context_policy(ca_file) -> None:
    context = build_client_context(ca_file)

    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.check_hostname is True
    assert context.verify_mode is ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("version", "accepted"),
    [
        ("TLSv1.3", True),
        ("TLSv1.2", True),
        ("TLSv1.1", False),
        ("TLSv1", False),
        ("SSLv3", False),
        (None, False),
    ],
)
def test_negotiated_version_check(version: str | None, accepted: bool) -> None:
    assert is_accepted_version(version) is accepted


async def test_send_outside_context_raises(ca_file) -> None:
    sender = TlsSender(SmtpSettings(ca_file=str(ca_file)))

    with pytest.raises(RuntimeError, match="async with"):
        await sender.send(
            envelope_from=SENDER,
            recipient=RECIPIENT,
            data=build_message(RECIPIENT),
            profile_id="p-1",
        )
