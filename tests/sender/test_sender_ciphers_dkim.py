"""Forward-secret ciphers only, DKIM signatures, rate limits and timeouts."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import dkim
import dns.resolver
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from carepost.connectors.dkim_signing import DkimSigner
from carepost.connectors.smtp import TlsSender
from carepost.connectors.smtp_pool import TokenBucket
from carepost.core.errors import ConfigError
from carepost.core.settings import DkimSettings
from carepost.core.states import DeliveryState

from .conftest import SettingsFor, StartServer
from .dns_server import DnsServer
from .servers import Script, build_message
from .test_sender_tls import RECIPIENT, assert_dropped_before_mail, send_one


async def test_static_rsa_cipher_server_dropped(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = start_server(static_rsa_only=True)

    outcome = await send_one(settings_for(server))

    assert_dropped_before_mail(outcome, server)
    assert "handshake" in (outcome.reason or "")


async def test_forward_secret_cipher_negotiated(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = start_server()

    outcome = await send_one(settings_for(server, tls="starttls"))

    assert outcome.state is DeliveryState.SENT
    assert outcome.tls_cipher is not None
    assert outcome.tls_cipher.startswith(("TLS_", "ECDHE-", "DHE-"))


def write_key(folder: Path) -> tuple[Path, str]:
    """Write an RSA private key; return its path and the DKIM TXT record."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = folder / "dkim.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return path, f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"


async def test_dkim_signature_verifies_through_dns(
    start_server: StartServer, settings_for: SettingsFor, dns_server: DnsServer,
    tmp_path: Path,
) -> None:
    key_file, record = write_key(tmp_path)
    dns_server.add_txt("mail2024._domainkey.example.org", record)
    server = start_server()
    dkim_settings = DkimSettings(key_file=str(key_file), selector="mail2024",
                                 domain="example.org")

    outcome = await send_one(settings_for(server, dkim=dkim_settings))
    received = server.messages[0]
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = dns_server.port

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(b"".join(r.strings) for r in answer)

    assert outcome.state is DeliveryState.SENT
    assert received.startswith(b"DKIM-Signature:")
    assert dkim.verify(received, dnsfunc=lookup)
    assert not dkim.verify(received.replace(b"flu shot", b"flu shots"), dnsfunc=lookup)
    signed = received.split(b"h=", 1)[1].split(b";", 1)[0].replace(b"\r\n", b"")
    assert b"list-unsubscribe" in signed.replace(b" ", b"").replace(b"\t", b"")


def test_dkim_missing_key_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key_file"):
        DkimSigner(DkimSettings(key_file=str(tmp_path / "none.pem"), selector="s",
                                domain="example.org"))


def test_dkim_signer_repr_hides_key(tmp_path: Path) -> None:
    key_file, _ = write_key(tmp_path)
    signer = DkimSigner(DkimSettings(key_file=str(key_file), selector="s",
                                     domain="example.org"))

    assert "PRIVATE" not in repr(signer)
    assert "example.org" in repr(signer)


async def test_token_bucket_spaces_messages() -> None:
    bucket = TokenBucket(rate=20.0, burst=2)
    started = time.monotonic()

    for _ in range(6):
        await bucket.acquire()

    # Two tokens at once, then four more at 20 a second: about 0.2 s.
    assert time.monotonic() - started >= 0.18


async def test_rate_per_domain_applies_to_sends(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = start_server()
    sender = TlsSender(settings_for(server, rate_per_domain=20.0, rate_burst=1))
    started = time.monotonic()

    async with sender:
        outcomes = await asyncio.gather(*(
            sender.send(envelope_from="clinic@example.org", recipient=RECIPIENT,
                        data=build_message(RECIPIENT), profile_id=f"p-{n}")
            for n in range(5)))

    assert all(o.state is DeliveryState.SENT for o in outcomes)
    assert time.monotonic() - started >= 0.19


async def test_message_timeout_before_data_defers(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = start_server(Script(data_delay_seconds=2.0))

    outcome = await send_one(settings_for(server, message_timeout_seconds=0.5))

    # The content went out, so a reply lost to the message timeout is unknown.
    assert outcome.state is DeliveryState.SENDING
