"""Fixtures for the connector tests: a DuckDB file, key pairs, local servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .fhir_server import FhirServer
from tests.support.uvicorn_thread import UvicornThread

CLIENT_ID = "carepost-test-client"
KEY_ID = "carepost-test-key-1"
PRIVATE_KEY_ENV = "CAREPOST_TEST_FHIR_KEY"


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to a real DuckDB file in the test's folder."""
    connection = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    yield connection
    connection.close()


@pytest.fixture(scope="session")
def rsa_key_pair() -> tuple[str, str]:
    """A fresh RSA key pair (private PEM, public PEM) for SMART client assertions."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return private, public


@pytest.fixture
def fhir_server(rsa_key_pair, monkeypatch) -> Iterator[FhirServer]:
    """A local FHIR server on 127.0.0.1; the client's key is in the environment."""
    private, public = rsa_key_pair
    monkeypatch.setenv(PRIVATE_KEY_ENV, private)
    server = FhirServer(public, CLIENT_ID, KEY_ID)
    with UvicornThread(server.app) as running:
        server.base = running.url
        yield server
