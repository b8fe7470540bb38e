"""Envelope and header checks that run before a message reaches the socket.

A campaign message goes to exactly one patient. These checks reject anything
that could send it to someone else or smuggle extra SMTP commands:

- a CR, LF or other control character in the envelope sender or recipient
  (it would end the command line and start a new one, RFC 5321 section 2.3.8);
- an envelope address that is not one plain ASCII addr-spec;
- more than one envelope recipient;
- message headers with more than one ``To`` address, a ``To`` address that
  differs from the envelope recipient, or any ``Cc``/``Bcc``/``Resent-*``
  recipient header.

Messages name the profile id and the rule, never the address.
"""

from __future__ import annotations

import re
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses

from carepost.core.errors import CarepostError

__all__ = ["EnvelopeError", "check_envelope"]

_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")

# A dot-atom local part and a host name of letters, digits and hyphens
# (IDNs in their ASCII "xn--" form). Quoted local parts and address literals
# are valid in RFC 5321 but never come from a CDP profile, so they are
# rejected rather than passed to the relay.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDR_SPEC = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+")

_FORBIDDEN_HEADERS = ("Cc", "Bcc", "Resent-To", "Resent-Cc", "Resent-Bcc")

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


def _check_address(value: object, role: str, profile_id: str) -> None:
    if not isinstance(value, str) or not value:
        raise EnvelopeError(profile_id, f"{role} is missing")
    if _CONTROL_CHARACTER.search(value):
        raise EnvelopeError(profile_id, f"{role} contains a control character")
    if not value.isascii():
        raise EnvelopeError(
            profile_id,
            f"{role} contains non-ASCII characters, which need SMTPUTF8 "
            "and the sender does not use it",
        )
    if not _ADDR_SPEC.fullmatch(value):
        raise EnvelopeError(profile_id, f"{role} is not one plain address")


def _check_headers(data: bytes, recipient: str, profile_id: str) -> None:
    headers: Message = BytesHeaderParser(policy=compat32).parsebytes(data)

    for name in _FORBIDDEN_HEADERS:
        if headers.get_all(name):
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
    if addresses[0].casefold() != recipient.casefold():
        raise EnvelopeError(
            profile_id,
            "the To header address differs from the envelope recipient",
            hint="render the message for the same profile it is sent to",
        )
