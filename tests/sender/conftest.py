"""Fixtures for the sender tests: test certificates and scripted servers."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from carepost.core.settings import SmtpSettings

from .servers import Certificates, RecordingServer, Script, server_context


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates.create(tmp_path_factory.mktemp("certificates"))


StartServer = Callable[..., RecordingServer]


@pytest.fixture
def start_server(certificates: Certificates) -> Iterator[StartServer]:
    """Start a `RecordingServer`; every server is stopped after the test.

    ``certificate`` is one of "good", "wrong_host", "expired", "untrusted".
    """
    running: list[RecordingServer] = []

    def start(
        script: Script | None = None,
        *,
        certificate: str = "good",
        legacy_tls_only: bool = False,
        implicit_tls: bool = False,
    ) -> RecordingServer:
        context: ssl.SSLContext = server_context(
            getattr(certificates, certificate), legacy_tls_only=legacy_tls_only
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
