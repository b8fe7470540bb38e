"""Build the RFC 5322 bytes of one message directly, without ``EmailMessage``.

``EmailMessage`` parses, folds and re-serialises every header and part on
each message: in ``bench/render.py`` that took about 1.7 ms of CPU per
message, against about 0.07 ms for the Jinja render itself. This builder
joins precomputed header lines and part headers with the two bodies,
quoted-printable encoded by ``binascii.b2a_qp`` (C code). The output is
what ``build_message_email`` in ``mime.py`` would send: the tests parse
both with the standard library and compare headers, parts and bodies.

Wire rules kept here:

- every line ends in CRLF and no line exceeds 78 octets, except
  ``List-Unsubscribe``, whose URL is not folded (at most 998 octets,
  checked in ``mime.check_envelope``);
- a subject that is not short ASCII is sent as RFC 2047 base64
  encoded-words of at most 42 UTF-8 bytes, never splitting a character;
- the MIME boundary starts with ``=_``, which quoted-printable output
  cannot contain, so no body line can be taken for a boundary.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import hashlib
import re
from email.message import EmailMessage
from email.utils import format_datetime
from functools import lru_cache

from carepost.templates.errors import HeaderInjectionError
from carepost.templates.mime import (
    Envelope,
    RenderedContent,
    address_header,
    check_envelope,
)

# A dot-atom address (RFC 5322 section 3.4.1) in ASCII. Quoted local parts
# and address literals are valid but not accepted for recipients.
_DOT_ATOM = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+\Z"
)
# "Subject: " plus the value fits in 78 octets.
_MAX_PLAIN_SUBJECT = 69
# 42 bytes of UTF-8 are 56 base64 characters: "Subject: =?utf-8?b?...?=" is
# 77 octets, and each encoded-word stays under RFC 2047's 75 characters.
_WORD_BYTES = 42
_PART_HEAD = (
    b'Content-Type: text/%s; charset="utf-8"\r\n'
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
)
_TEXT_HEAD = _PART_HEAD % b"plain"
_HTML_HEAD = _PART_HEAD % b"html"


def build_message(content: RenderedContent, envelope: Envelope) -> bytes:
    """Return the message as bytes with CRLF line endings, ready for DATA."""
    check_envelope(content, envelope)
    boundary = _boundary(envelope.message_id)
    headers = [
        from_header(envelope.from_name, envelope.from_address),
        b"To: " + _recipient(envelope.to_address),
        b"Subject: " + encode_subject(content.subject),
        b"Date: " + format_datetime(envelope.date).encode("ascii"),
        b"Message-ID: " + envelope.message_id.encode("ascii"),
        b"List-Unsubscribe: <" + envelope.unsubscribe_url.encode("ascii") + b">",
    ]
    if envelope.unsubscribe_post:
        # RFC 8058: a POST with this body unsubscribes; GET changes nothing.
        headers.append(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click")
    headers += [
        b"Content-Language: " + content.language.encode("ascii"),
        b"MIME-Version: 1.0",
        b'Content-Type: multipart/alternative;\r\n boundary="' + boundary + b'"',
    ]

    # The CRLF before a delimiter belongs to the delimiter (RFC 2046 section
    # 5.1.1), so each body's own final line break is followed by one more.
    delimiter = b"\r\n--" + boundary + b"\r\n"
    return b"".join(
        [
            b"\r\n".join(headers),
            b"\r\n\r\n--" + boundary + b"\r\n",
            _TEXT_HEAD,
            encode_body(content.text),
            delimiter,
            _HTML_HEAD,
            encode_body(content.html),
            b"\r\n--" + boundary + b"--\r\n",
        ]
    )


@lru_cache(maxsize=64)
def from_header(display_name: str, address: str) -> bytes:
    """Return the ``From`` line, formatted by the email package once per sender."""
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = address_header("From", address, display_name)
    return message.as_bytes().rstrip(b"\r\n")


def _recipient(address: str) -> bytes:
    # The error never repeats the address: it may be a patient's.
    if not _DOT_ATOM.match(address):
        raise HeaderInjectionError("To", "expected exactly one valid address")
    return address.encode("ascii")


def encode_subject(subject: str) -> bytes:
    """Return the subject as one ASCII line or as folded encoded-words."""
    if (
        subject.isascii()
        and len(subject) <= _MAX_PLAIN_SUBJECT
        and "=?" not in subject
        and subject == subject.strip()
    ):
        return subject.encode("ascii")
    words = []
    for chunk in _utf8_chunks(subject, _WORD_BYTES):
        words.append(b"=?utf-8?b?" + base64.b64encode(chunk) + b"?=")
    # Readers join adjacent encoded-words without the folding space
    # (RFC 2047 section 6.2), so the split is invisible after decoding.
    return b"\r\n ".join(words)


def _utf8_chunks(text: str, limit: int) -> list[bytes]:
    data = text.encode("utf-8")
    chunks = []
    start = 0
    while len(data) - start > limit:
        end = start + limit
        # Back up to a character start: continuation bytes are 0b10xxxxxx.
        while data[end] & 0xC0 == 0x80:
            end -= 1
        chunks.append(data[start:end])
        start = end
    chunks.append(data[start:])
    return chunks


def encode_body(text: str) -> bytes:
    """Return ``text`` quoted-printable encoded, CRLF line ends, final newline."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    encoded = binascii.b2a_qp(text.encode("utf-8"), quotetabs=False, istext=True)
    return encoded.replace(b"\n", b"\r\n")


def _boundary(message_id: str) -> bytes:
    # Derived from the Message-ID, so one delivery always gives the same bytes.
    digest = hashlib.sha256(message_id.encode("utf-8")).hexdigest()[:24]
    return b"=_carepost_" + digest.encode("ascii")
