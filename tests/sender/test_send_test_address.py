"""``carepost send-test --to``: unsafe and internationalised addresses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from carepost.flows.cli import app

from .servers import Certificates, Script

runner = CliRunner()

# The tester's input: a second SMTP command smuggled after CR LF.
SMUGGLED = "ops@example.org\r\nRCPT TO:<other@example.org>"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "carepost.yaml"
    path.write_text(
        "practice: {name: Test Clinic, postal_address: 1 Main St}\n"
        "sender: {address: clinic@example.org, name: Test Clinic}\n"
        f"state_dir: {tmp_path / 'state'}\n")
    return path


def send_test(to: str, port: int, ca_file: Path, config: Path) -> tuple[int, str, str]:
    result = runner.invoke(app, ["send-test", "--to", to, "--host", "localhost",
                                 "--port", str(port), "--ca", str(ca_file),
                                 "--config", str(config), "--json"])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("to", [SMUGGLED, "ops@example.org\n", "ops\r@example.org",
                                "ops@example.org\u2028"])
def test_control_character_one_line(to: str, start_server, certificates: Certificates,
                                    config: Path) -> None:
    server = start_server()

    code, out, err = send_test(to, server.port, certificates.ca_file, config)

    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("error: --to: the address contains a control character")
    assert "nothing was sent" in err
    assert "ops" not in err
    assert "Traceback" not in err
    assert server.commands == []


@pytest.mark.parametrize("to", ["Ops <ops@example.org>", "ops@example", "a@b@example.org",
                                "ops@-bad-.example.org"])
def test_invalid_address_names_option(to: str, start_server, certificates: Certificates,
                                      config: Path) -> None:
    server = start_server()

    code, _out, err = send_test(to, server.port, certificates.ca_file, config)

    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("error: --to: ")
    assert "profile send-test" not in err
    assert "at the source" not in err
    assert "ops@" not in err
    assert server.commands == []


def test_utf8_local_part_and_idn_sent(start_server, certificates: Certificates,
                                      config: Path) -> None:
    server = start_server(Script(offer_smtputf8=True))

    code, out, err = send_test("josé@bücher.example.test", server.port,
                               certificates.ca_file, config)

    assert code == 0, err
    assert json.loads(out)["state"] == "sent"
    [message] = server.messages
    assert "To: josé@xn--bcher-kva.example.test".encode() in message
    assert b"=?utf-8?" not in message.split(b"\r\n\r\n")[0]
    [rcpt] = [c.argument for c in server.commands if c.verb == "RCPT"]
    assert rcpt is not None and "josé@xn--bcher-kva.example.test" in rcpt


def test_idn_domain_sent_in_ascii(start_server, certificates: Certificates,
                                  config: Path) -> None:
    server = start_server()

    code, out, err = send_test("jose@bücher.example.test", server.port,
                               certificates.ca_file, config)

    assert code == 0, err
    assert json.loads(out)["state"] == "sent"
    [message] = server.messages
    assert b"To: jose@xn--bcher-kva.example.test\r\n" in message
    assert message.isascii()
