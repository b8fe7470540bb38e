"""Envelope guard: nothing unsafe reaches the socket, and errors carry no address."""

from __future__ import annotations

from email.parser import HeaderParser
from email.policy import compat32

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carepost.connectors.smtp import EnvelopeError, TlsSender
from carepost.connectors.smtp_envelope import check_envelope, header_block, wire_address
from carepost.core.errors import CarepostError
from carepost.core.states import DeliveryState

from .conftest import SettingsFor, StartServer
from .servers import build_message

SENDER = "clinic@example.org"
RECIPIENT = "sam@example.org"
INJECTED = "sam@example.org>\r\nRCPT TO:<leak@evil.example.test"


async def test_crlf_injection_never_reaches_server(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = start_server()

    async with TlsSender(settings_for(server)) as sender:
        with pytest.raises(EnvelopeError) as raised:
            await sender.send(
                envelope_from=SENDER,
                recipient=INJECTED,
                data=build_message(RECIPIENT),
                profile_id="p-13",
            )
        follow_up = await sender.send(
            envelope_from=SENDER,
            recipient=RECIPIENT,
            data=build_message(RECIPIENT),
            profile_id="p-14",
        )

    assert "p-13" in str(raised.value)
    assert "control character" in str(raised.value)
    assert "sam@" not in str(raised.value)
    assert "evil" not in str(raised.value)
    assert follow_up.state is DeliveryState.SENT
    assert server.count("RCPT") == 1
    assert server.count("MAIL") == 1
    rcpt = next(c for c in server.commands if c.verb == "RCPT")
    assert rcpt.argument == f"TO:<{RECIPIENT}>"
    assert all("evil" not in (c.argument or "") for c in server.commands)


async def test_rejected_envelope_opens_no_connection(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = start_server()

    async with TlsSender(settings_for(server)) as sender:
        with pytest.raises(EnvelopeError):
            await sender.send(
                envelope_from=SENDER,
                recipient=INJECTED,
                data=build_message(RECIPIENT),
                profile_id="p-13",
            )

    assert server.commands == []
    assert sender.sessions_opened == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("recipient", "sam@example.org\r\n"),
        ("recipient", "sam@example.org\nRCPT TO:<x@example.test>"),
        ("recipient", "sam@exam\x00ple.org"),
        ("recipient", "sam@example.org\x7f"),
        ("recipient", "sam\t@example.org"),
        ("envelope_from", "clinic@example.org\r\nRSET"),
        ("envelope_from", "clinic@example.org\x1b"),
    ],
)
def test_control_characters_rejected(field: str, value: str) -> None:
    values = {"envelope_from": SENDER, "recipient": RECIPIENT, field: value}

    with pytest.raises(EnvelopeError, match="control character") as raised:
        check_envelope(
            envelope_from=values["envelope_from"],
            recipient=values["recipient"],
            data=build_message(RECIPIENT),
            profile_id="p-7",
        )

    assert "p-7" in str(raised.value)
    assert "example.org" not in str(raised.value)


@pytest.mark.parametrize(
    "value",
    [
        "sam@example.org, ann@example.org",
        "sam@example.org;ann@example.org",
        "<sam@example.org>",
        "Sam <sam@example.org>",
        "sam@@example.org",
        "sam@example",
        "sam example@example.org",
        "@example.org",
        "sam@",
        "",
    ],
)
def test_malformed_recipient_rejected(value: str) -> None:
    with pytest.raises(EnvelopeError) as raised:
        check_envelope(
            envelope_from=SENDER,
            recipient=value,
            data=build_message(RECIPIENT),
            profile_id="p-8",
        )

    assert "p-8" in str(raised.value)
    assert "example.org" not in str(raised.value)


def test_non_ascii_local_part_accepted() -> None:
    recipient = "zoë@example.org"
    data = f"From: {SENDER}\r\nTo: {recipient}\r\n\r\nhi\r\n".encode()

    check_envelope(envelope_from=SENDER, recipient=recipient, data=data,
                   profile_id="p-9")

    assert wire_address(recipient) == (recipient, True)


def test_idn_domain_goes_out_as_ascii() -> None:
    assert wire_address("sam@bücher.example") == ("sam@xn--bcher-kva.example", False)


@pytest.mark.parametrize("character", ["\x85", "\u2028", "\u2029", "\x9b"])
def test_unicode_line_breaks_rejected(character: str) -> None:
    with pytest.raises(EnvelopeError, match="control character"):
        check_envelope(
            envelope_from=SENDER,
            recipient=f"zo{character}ë@example.org",
            data=build_message(RECIPIENT),
            profile_id="p-9",
        )


def test_invalid_idn_domain_rejected() -> None:
    with pytest.raises(EnvelopeError, match="domain"):
        check_envelope(
            envelope_from=SENDER,
            recipient="sam@exa\u0301\u200dmple.org",
            data=build_message(RECIPIENT),
            profile_id="p-9",
        )


def test_recipient_list_rejected() -> None:
    with pytest.raises(EnvelopeError, match="exactly one envelope recipient"):
        check_envelope(
            envelope_from=SENDER,
            recipient=[RECIPIENT, "ann@example.org"],
            data=build_message(RECIPIENT),
            profile_id="p-10",
        )


def test_envelope_error_is_value_error() -> None:
    error = EnvelopeError("p-1", "envelope recipient is missing")

    assert isinstance(error, ValueError)
    assert isinstance(error, CarepostError)
    assert error.profile_id == "p-1"


def with_headers(*header_lines: str) -> bytes:
    head = "".join(f"{line}\r\n" for line in header_lines)
    return (
        f"From: Example Clinic <{SENDER}>\r\n{head}Subject: Reminder\r\n\r\nHi\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (with_headers(f"To: {RECIPIENT}, ann@example.org"), "exactly one To"),
        (with_headers(f"To: {RECIPIENT}", "To: ann@example.org"), "exactly one To"),
        (with_headers(), "exactly one To"),
        (with_headers(f"To: {RECIPIENT}", "Cc: ann@example.org"), "Cc header"),
        (with_headers(f"To: {RECIPIENT}", "Bcc: ann@example.org"), "Bcc header"),
        (
            with_headers(f"To: {RECIPIENT}", "Resent-To: ann@example.org"),
            "Resent-To header",
        ),
        (with_headers("To: ann@example.org"), "differs from the envelope"),
        (
            with_headers("To: Patients: sam@example.org, ann@example.org;"),
            "exactly one To",
        ),
    ],
)
def test_unsafe_headers_rejected(data: bytes, expected: str) -> None:
    with pytest.raises(EnvelopeError, match=expected) as raised:
        check_envelope(
            envelope_from=SENDER, recipient=RECIPIENT, data=data, profile_id="p-30"
        )

    assert "p-30" in str(raised.value)
    assert "example.org" not in str(raised.value)


def test_to_with_display_name_accepted() -> None:
    data = with_headers(f'To: "Sam Patient" <{RECIPIENT.upper()}>')

    check_envelope(envelope_from=SENDER, recipient=RECIPIENT, data=data, profile_id="p")


async def test_cc_message_never_reaches_server(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = start_server()
    data = with_headers(f"To: {RECIPIENT}", "Cc: ann@example.org, ben@example.org")

    async with TlsSender(settings_for(server)) as sender:
        with pytest.raises(EnvelopeError, match="Cc header"):
            await sender.send(
                envelope_from=SENDER, recipient=RECIPIENT, data=data, profile_id="p-30"
            )

    assert server.commands == []
    assert server.messages == []


def test_data_must_be_bytes() -> None:
    with pytest.raises(EnvelopeError, match="must be bytes"):
        check_envelope(
            envelope_from=SENDER,
            recipient=RECIPIENT,
            data=build_message(RECIPIENT).decode(),
            profile_id="p-11",
        )


_PIECES = [b"\r", b"\n", b"\r\n", b"To: sam@example.org", b"Cc: leak@example.org",
           b"Subject: hi", b" folded", b"\tmore", b":", b"x", b"Bcc:", b"\xc3\xa9"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=30))
def test_header_block_parses_as_whole(pieces: list[bytes]) -> None:
    """Cutting the body off never changes the headers the parser reads."""
    data = b"".join(pieces) + b"\r\n\r\nbody line\r\nCc: not a header\r\n"

    def headers(raw: bytes) -> list[tuple[str, str]]:
        text = raw.decode("utf-8", "surrogateescape")
        parsed = HeaderParser(policy=compat32).parsestr(text, headersonly=True)
        return [(name, str(value)) for name, value in parsed.items()]

    assert headers(header_block(data)) == headers(data)


def test_cc_after_body_break_is_body() -> None:
    data = build_message(RECIPIENT) + b"\r\nCc: leak@example.org\r\n"
    check_envelope(envelope_from=SENDER, recipient=RECIPIENT, data=data,
                   profile_id="p-20")
    assert b"Cc:" not in header_block(data)
