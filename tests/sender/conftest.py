"""Fixtures for the sender tests: certificates, scripted SMTP, DNS and HTTPS servers."""

from __future__ import annotations

import random
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from carepost.connectors.mx import MxResolver
from carepost.connectors.smtp import TlsSender
from carepost.connectors.tls_status import TlsStatusStore
from carepost.core.settings import SmtpSettings

from .dns_server import DnsServer
from .policy_server import PolicyServer
from .servers import Certificates, RecordingServer, Script, server_context


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates.create(tmp_path_factory.mktemp("certificates"))


StartServer = Callable[..., RecordingServer]


@pytest.fixture
def start_server(certificates: Certificates) -> Iterator[StartServer]:
    """Start a `RecordingServer`; every server is stopped after the test.

    ``certificate`` is one of "good", "wrong_host", "expired", "untrusted",
    or a leaf certificate issued by ``certificates.ca``.
    """
    running: list[RecordingServer] = []

    def start(
        script: Script | None = None,
        *,
        certificate: str | trustme.LeafCert = "good",
        legacy_tls_only: bool = False,
        static_rsa_only: bool = False,
        implicit_tls: bool = False,
    ) -> RecordingServer:
        leaf = (getattr(certificates, certificate)
                if isinstance(certificate, str) else certificate)
        context: ssl.SSLContext = server_context(
            leaf, legacy_tls_only=legacy_tls_only, static_rsa_only=static_rsa_only
        )
        server = RecordingServer(context, script, implicit_tls=implicit_tls)
        server.start()
        running.append(server)
        return server

    yield start
    for server in running:
        server.stop()


SettingsFor = Callable[..., SmtpSettings]


@pytest.fixture
def settings_for(certificates: Certificates) -> SettingsFor:
    """Build `SmtpSettings` aimed at a test server, trusting the test CA."""

    def build(server: RecordingServer, **overrides: Any) -> SmtpSettings:
        values: dict[str, Any] = {
            "host": server.host,
            "port": server.port,
            "tls": "starttls",
            "ca_file": str(certificates.ca_file),
            "timeout_seconds": 5.0,
            "max_connections": 2,
        }
        values.update(overrides)
        return SmtpSettings(**values)

    return build


@pytest.fixture
def ca_file(certificates: Certificates) -> Path:
    return certificates.ca_file


# --- direct-to-MX: a DNS server, an MTA-STS policy server, MX test servers ---

# Domains whose mta-sts.<domain> name the policy server's certificate covers.
POLICY_DOMAINS = ("enforce.example.test", "testing.example.test",
                  "none.example.test", "cached.example.test", "large.example.test",
                  "redirect.example.test", "status.example.test")


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


@pytest.fixture
def policy_server(certificates: Certificates,
                  dns_server: DnsServer) -> Iterator[PolicyServer]:
    """An HTTPS server for mta-sts.<domain> of every `POLICY_DOMAINS` entry."""
    leaf = certificates.ca.issue_cert(*(f"mta-sts.{d}" for d in POLICY_DOMAINS))
    with PolicyServer(leaf) as server:
        for domain in POLICY_DOMAINS:
            dns_server.add(f"mta-sts.{domain}", "A", "127.0.0.1")
        yield server


@dataclass
class MxSetup:
    """MX test servers by host name, and the port map the sender needs."""

    servers: dict[str, RecordingServer]

    @property
    def ports(self) -> dict[str, int]:
        return {name: server.port for name, server in self.servers.items()}


MxServers = Callable[..., MxSetup]


@pytest.fixture
def mx_servers(start_server: StartServer, certificates: Certificates,
               dns_server: DnsServer) -> MxServers:
    """Start one STARTTLS server per MX host name, each resolving to 127.0.0.1.

    ``hosts`` maps a host name to a `Script`; ``certificate_for`` can give a
    host a certificate for other names (a wrong host).
    """

    def start(hosts: dict[str, Script | None],
              certificate_for: dict[str, str] | None = None) -> MxSetup:
        servers = {}
        for name, script in hosts.items():
            names = (certificate_for or {}).get(name, name)
            leaf = certificates.ca.issue_cert(names)
            servers[name] = start_server(script, certificate=leaf)
            dns_server.add(name, "A", "127.0.0.1")
        return MxSetup(servers)

    return start


SenderForMx = Callable[..., TlsSender]


@pytest.fixture
def mx_sender(certificates: Certificates, dns_server: DnsServer) -> SenderForMx:
    """Build an mx-mode `TlsSender` that resolves through ``dns_server``."""

    def build(setup: MxSetup, *, policy_port: int = 443,
              store: TlsStatusStore | None = None, **overrides: Any) -> TlsSender:
        values: dict[str, Any] = {"mode": "mx", "timeout_seconds": 5.0,
                                  "max_connections": 4}
        values.update(overrides)
        return TlsSender(
            SmtpSettings(**values), ca_file=certificates.ca_file,
            resolver=MxResolver(dns_server.resolver(), rng=random.Random(7)),
            status_store=store, mx_ports=setup.ports, mta_sts_https_port=policy_port,
        )

    return build
