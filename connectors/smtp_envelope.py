"""Envelope and header checks that run before a message reaches the socket.

A campaign message goes to exactly one patient. These checks reject anything
that could send it to someone else or smuggle extra SMTP commands:

- a CR, LF or other control character (C0, C1, U+2028, U+2029) in the
  envelope sender or recipient (it would end the command line and start a
  new one, RFC 5321 section 2.3.8);
- an envelope address that is not one plain addr-spec. A non-ASCII local
  part is allowed (RFC 6531) and makes the message need SMTPUTF8; a
  non-ASCII domain must be a valid IDN and goes out in its ASCII form;
- more than one envelope recipient;
- message headers with more than one ``To`` address, a ``To`` address that
  differs from the envelope recipient, or any ``Cc``/``Bcc``/``Resent-*``
  recipient header.

Messages name the profile id and the rule, never the address.
"""

from __future__ import annotations

import re
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32
from email.utils import getaddresses

from carepost.connectors.mx import to_ascii_domain
from carepost.core.errors import CarepostError

__all__ = ["EnvelopeError", "check_envelope", "wire_address"]

_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

# A dot-atom local part and a host name of letters, digits and hyphens
# (IDNs in their ASCII "xn--" form). Quoted local parts and address literals
# are valid in RFC 5321 but never come from a CDP profile, so they are
# rejected rather than passed to the relay.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u00a0-\U0010ffff-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDR_SPEC = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+")

_FORBIDDEN_HEADERS = ("Cc", "Bcc", "Resent-To", "Resent-Cc", "Resent-Bcc")
_BLANK_LINE_PAIRS = (b"\n\n", b"\n\r", b"\r\r")

_FIX = "correct the address at the source; the message was not sent"


class EnvelopeError(CarepostError, ValueError):
    """The envelope or headers of one message are unsafe to send.

    Raised before any byte of the message is written; ``profile_id`` names
    the recipient's profile and the message never contains the address.
    """

    def __init__(self, profile_id: str, problem: str, *, hint: str = _FIX) -> None:
        self.profile_id = profile_id
        self.problem = problem
        super().__init__(f"profile {profile_id}: {problem}", hint=hint)


def check_envelope(
    *, envelope_from: object, recipient: object, data: object, profile_id: str
) -> None:
    """Raise `EnvelopeError` unless the message is safe to hand to the relay."""
    if not isinstance(recipient, str):
        raise EnvelopeError(
            profile_id,
            "a campaign message takes exactly one envelope recipient, "
            f"got {type(recipient).__name__}",
            hint="send one message per recipient",
        )
    _check_address(envelope_from, "envelope sender", profile_id)
    _check_address(recipient, "envelope recipient", profile_id)

    if not isinstance(data, bytes):
        raise EnvelopeError(
            profile_id,
            f"message data must be bytes, got {type(data).__name__}",
            hint="pass the rendered RFC 5322 message as bytes",
        )
    _check_headers(data, recipient, profile_id)


def wire_address(address: str) -> tuple[str, bool]:
    """Return the address with its domain in ASCII, and whether it needs SMTPUTF8.

    Call only on an address that `check_envelope` accepted.
    """
    local, _, domain = address.rpartition("@")
    return f"{local}@{to_ascii_domain(domain)}", not local.isascii()


def _check_address(value: object, role: str, profile_id: str) -> None:
    if not isinstance(value, str) or not value:
        raise EnvelopeError(profile_id, f"{role} is missing")
    if _CONTROL_CHARACTER.search(value):
        raise EnvelopeError(profile_id, f"{role} contains a control character")
    local, at, domain = value.rpartition("@")
    try:
        ascii_domain = to_ascii_domain(domain) if at else ""
    except ValueError as exc:
        raise EnvelopeError(profile_id, f"{role} domain: {exc}") from None
    if domain.endswith(".") or not _ADDR_SPEC.fullmatch(f"{local}@{ascii_domain}"):
        raise EnvelopeError(profile_id, f"{role} is not one plain address")


def header_block(data: bytes) -> bytes:
    """Return ``data`` up to and including the blank line that ends its headers.

    The email parser ends the headers at the first empty line, with CRLF,
    LF or CR as line ends. Such a line always contains one of the adjacent
    pairs LF LF, LF CR or CR CR (a CR followed by LF is one line end). So
    cutting after the first pair keeps every header while leaving out the
    body, which the parser would otherwise read line by line.
    """
    found = [index for index in (data.find(pair) for pair in _BLANK_LINE_PAIRS)
             if index >= 0]
    if not found:
        return data
    return data[: min(found) + 3]


def _check_headers(data: bytes, recipient: str, profile_id: str) -> None:
    # UTF-8 header bytes (RFC 6532) decode to text; other bytes stay escaped.
    text = header_block(data).decode("utf-8", "surrogateescape")
    headers: Message = HeaderParser(policy=compat32).parsestr(text, headersonly=True)

    present = {name.lower() for name in headers.keys()}
    for name in _FORBIDDEN_HEADERS:
        if name.lower() in present:
            raise EnvelopeError(
                profile_id,
                f"message has a {name} header, and campaign messages go to "
                "one recipient only",
                hint="build one message per recipient with a single To",
            )

    to_values = headers.get_all("To") or []
    addresses = [address for _, address in getaddresses(to_values) if address]
    if len(to_values) != 1 or len(addresses) != 1:
        raise EnvelopeError(
            profile_id,
            f"message must have exactly one To address, found {len(addresses)} "
            f"in {len(to_values)} To header(s)",
            hint="build one message per recipient with a single To",
        )
    if _comparable(addresses[0]) != _comparable(recipient):
        raise EnvelopeError(
            profile_id,
            "the To header address differs from the envelope recipient",
            hint="render the message for the same profile it is sent to",
        )


def _comparable(address: str) -> str:
    """Return an address in a form where the IDN and case variants compare equal."""
    local, _, domain = address.rpartition("@")
    try:
        domain = to_ascii_domain(domain)
    except ValueError:
        pass
    return f"{local}@{domain}".casefold()
