"""Message content, envelope, header checks and the reference MIME builder.

The message is multipart/alternative (text, then HTML) and UTF-8. Every
header value is checked for CR, LF and other control characters before
anything is built.

``build_message_email`` builds the message with ``EmailMessage``, with
quoted-printable parts, so no body line exceeds 76 octets. It is
the reference that the tests and ``bench/render.py`` compare the direct
builder in ``wire.py`` against; the flows send the direct builder's bytes.
"""

from __future__ import annotations

import email.policy
import re
from dataclasses import dataclass, field
from datetime import datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from carepost.core.states import Purpose
from carepost.templates.errors import HeaderInjectionError

# C0 controls, DEL, C1 controls and the Unicode line and paragraph
# separators: str.splitlines() and some mail software treat the last
# ones as line breaks too.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_MESSAGE_ID = re.compile(r"<[^<>@\s]+@[^<>@\s]+>\Z")
_LANGUAGE_TAG = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{1,8})*\Z")
# RFC 5322 section 2.1.1: lines must not exceed 998 octets. Raw headers
# (List-Unsubscribe) are not folded, so the URL must fit on one line.
_MAX_URL_LENGTH = 900
# Raw header strings are sent as given: the default "long" refolding turns
# a long URL into RFC 2047 encoded-words, which List-Unsubscribe parsers
# do not decode.
_POLICY = email.policy.SMTP.clone(refold_source="none")


@dataclass(frozen=True)
class RenderedContent:
    """The rendered parts of one message; every text field may contain PHI."""

    subject: str = field(repr=False)
    preheader: str = field(repr=False)
    html: str = field(repr=False)
    text: str = field(repr=False)
    purpose: Purpose = Purpose.CARE
    # The language of the template version that was rendered ("en", "es").
    language: str = "en"
    # The template's From display name; None means the configured sender's.
    sender_name: str | None = None


@dataclass(frozen=True)
class Envelope:
    """Sender, recipient and per-message headers of one message."""

    from_address: str = field(repr=False)
    from_name: str
    to_address: str = field(repr=False)
    message_id: str
    unsubscribe_url: str = field(repr=False)
    unsubscribe_post: bool
    date: datetime


def check_header_value(header: str, value: str) -> None:
    """Raise ``HeaderInjectionError`` if ``value`` is not one clean line."""
    if _CONTROL.search(value):
        raise HeaderInjectionError(
            header, "contains CR, LF or another control character"
        )


def build_message_email(content: RenderedContent, envelope: Envelope) -> bytes:
    """Build the message with ``EmailMessage``: the slower reference builder."""
    check_envelope(content, envelope)

    message = EmailMessage(policy=_POLICY)
    message["From"] = address_header("From", envelope.from_address, envelope.from_name)
    message["To"] = address_header("To", envelope.to_address, "")
    message["Subject"] = content.subject
    message["Date"] = format_datetime(envelope.date)
    message.set_raw("Message-ID", envelope.message_id)
    message.set_raw("List-Unsubscribe", f"<{envelope.unsubscribe_url}>")
    if envelope.unsubscribe_post:
        # RFC 8058: a POST with this body unsubscribes; GET changes nothing.
        message.set_raw("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")

    message.set_content(
        _text_body(content.text),
        subtype="plain",
        charset="utf-8",
        cte="quoted-printable",
    )
    message.add_alternative(
        content.html, subtype="html", charset="utf-8", cte="quoted-printable"
    )
    # Set last: set_content and add_alternative move Content-* headers.
    message["Content-Language"] = content.language
    return message.as_bytes()


def check_envelope(content: RenderedContent, envelope: Envelope) -> None:
    """Raise ``HeaderInjectionError`` for any header value unsafe to send."""
    values = {
        "From": envelope.from_address,
        "From display name": envelope.from_name,
        "To": envelope.to_address,
        "Subject": content.subject,
        "Message-ID": envelope.message_id,
        "List-Unsubscribe": envelope.unsubscribe_url,
        "Content-Language": content.language,
    }
    if _CONTROL.search("".join(values.values())):
        # One search covers every value; the loop finds the header to name.
        for header, value in values.items():
            check_header_value(header, value)
    if not content.subject.strip():
        raise HeaderInjectionError("Subject", "is empty")
    if not _LANGUAGE_TAG.match(content.language):
        raise HeaderInjectionError("Content-Language", "expected a tag such as 'es'")
    if not _MESSAGE_ID.match(envelope.message_id):
        raise HeaderInjectionError("Message-ID", "expected the form <id@domain>")
    _check_unsubscribe(content, envelope)
    if envelope.date.tzinfo is None or envelope.date.utcoffset() is None:
        raise ValueError("Envelope.date must be timezone-aware")


def _check_unsubscribe(content: RenderedContent, envelope: Envelope) -> None:
    url = envelope.unsubscribe_url
    if not url.startswith("https://") or len(url) > _MAX_URL_LENGTH:
        raise HeaderInjectionError(
            "List-Unsubscribe",
            f"expected an https URL of at most {_MAX_URL_LENGTH} characters",
        )
    if any(character in url for character in "<>, "):
        raise HeaderInjectionError(
            "List-Unsubscribe", "URL contains <, >, comma or space"
        )
    if content.purpose is Purpose.MARKETING and not envelope.unsubscribe_post:
        raise ValueError(
            "marketing messages must offer one-click unsubscribe (RFC 8058)"
        )


def address_header(header: str, addr_spec: str, display_name: str) -> Address:
    """Return one mailbox; the error never repeats the address."""
    if not addr_spec.isascii():
        # NOTE: SMTPUTF8 (non-ASCII local parts) is not supported yet.
        raise HeaderInjectionError(header, "address must be ASCII")
    try:
        address = Address(display_name=display_name, addr_spec=addr_spec)
    except (ValueError, IndexError, HeaderParseError):
        raise HeaderInjectionError(
            header, "expected exactly one valid address"
        ) from None
    if not address.username or not address.domain:
        raise HeaderInjectionError(header, "expected exactly one valid address")
    return address


def _text_body(text: str) -> str:
    # set_content needs a final newline to end the part cleanly.
    return text if text.endswith("\n") else text + "\n"
