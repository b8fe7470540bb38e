"""Build the RFC 5322 bytes of one message directly, without ``EmailMessage``.

``EmailMessage`` parses, folds and re-serialises every header and part on
each message: in ``bench/render.py`` that took about 1.7 ms of CPU per
message, against about 0.07 ms for the Jinja render itself. This builder
joins precomputed header lines and part headers with the two encoded
bodies. The output carries what ``build_message_email`` in ``mime.py``
would send: the tests parse both with the standard library and compare
headers, parts and decoded bodies.

Each part picks its transfer encoding from two C-level checks:

- ``7bit`` (the body as it is) when the text is ASCII, no line exceeds
  998 octets (RFC 5322 section 2.1.1) and it contains no NUL and no copy
  of the boundary;
- ``base64`` otherwise, in lines of 76 characters. For the 3 kB HTML
  part of the shipped appointment reminder, timed with ``timeit`` on a
  2-core development machine, quoted-printable (``binascii.b2a_qp``) took
  20-38 us, base64 about 10 us and the 7bit checks about 3 us.
  SpamAssassin's MIME_BASE64_TEXT rule does not fire on base64 text parts
  whose charset is utf-8 (``Mail::SpamAssassin::Plugin::MIMEEval``).

Wire rules kept here:

- every line ends in CRLF. Header lines and base64 lines stay within 78
  octets, except ``List-Unsubscribe``, whose URL is not folded (at most
  998 octets, checked in ``mime.check_envelope``). 7bit body lines stay
  within 998 octets;
- a subject that is not short ASCII is sent as RFC 2047 base64
  encoded-words of at most 42 UTF-8 bytes, never splitting a character;
- the MIME boundary starts with ``=_``, which base64 output cannot
  contain and a 7bit body is checked not to contain, so no body line can
  be taken for a boundary.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import hashlib
import math
import re
from datetime import datetime, timedelta, timezone
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
# RFC 5322 section 2.1.1: at most 998 octets per line, without the CRLF.
MAX_LINE_OCTETS = 998
# RFC 2045 section 6.8: base64 lines of at most 76 characters.
_BASE64_LINE = 76
_PART_HEAD = (
    b'Content-Type: text/%s; charset="utf-8"\r\n'
    b"Content-Transfer-Encoding: %s\r\n\r\n"
)


def build_message(content: RenderedContent, envelope: Envelope) -> bytes:
    """Return the message as bytes with CRLF line endings, ready for DATA."""
    check_envelope(content, envelope)
    boundary = _boundary(envelope.message_id)
    headers = [
        from_header(envelope.from_name, envelope.from_address),
        b"To: " + _recipient(envelope.to_address),
        b"Subject: " + encode_subject(content.subject),
        b"Date: " + _date_header(envelope.date),
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
    text_encoding, text = encode_body(content.text, boundary)
    html_encoding, html = encode_body(content.html, boundary)
    return b"".join(
        [
            b"\r\n".join(headers),
            b"\r\n\r\n--" + boundary + b"\r\n",
            _PART_HEAD % (b"plain", text_encoding),
            text,
            delimiter,
            _PART_HEAD % (b"html", html_encoding),
            html,
            b"\r\n--" + boundary + b"--\r\n",
        ]
    )


@lru_cache(maxsize=64)
def from_header(display_name: str, address: str) -> bytes:
    """Return the ``From`` line, formatted by the email package once per sender."""
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = address_header("From", address, display_name)
    return message.as_bytes().rstrip(b"\r\n")


def _date_header(date: datetime) -> bytes:
    # Whole seconds and the UTC offset decide the header, so messages built
    # in the same second share one formatted value.
    offset = date.utcoffset()
    if offset is None:
        raise ValueError("Envelope.date must be timezone-aware")
    return _formatted_date(math.floor(date.timestamp()), offset)


@lru_cache(maxsize=8)
def _formatted_date(seconds: int, offset: timedelta) -> bytes:
    value = datetime.fromtimestamp(seconds, timezone(offset))
    return format_datetime(value).encode("ascii")


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


def encode_body(text: str, boundary: bytes) -> tuple[bytes, bytes]:
    """Encode a part body as 7bit or base64, with CRLF line ends.

    Returns the ``Content-Transfer-Encoding`` value and the encoded body.
    Line breaks are normalised to LF first and a final one is added, so the
    decoded body is ``text`` with LF line ends and a final newline.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    if text.isascii():
        data = text.encode("ascii")
        if (
            b"\0" not in data
            and boundary not in data
            and max(map(len, data.split(b"\n"))) <= MAX_LINE_OCTETS
        ):
            return b"7bit", data.replace(b"\n", b"\r\n")
    else:
        data = text.encode("utf-8")
    return b"base64", _base64_lines(data)


def _base64_lines(data: bytes) -> bytes:
    # One C call encodes everything; slicing the result into lines costs
    # less than encoding 57-byte chunks one by one (base64.encodebytes).
    encoded = binascii.b2a_base64(data, newline=False)
    lines = [
        encoded[start : start + _BASE64_LINE]
        for start in range(0, len(encoded), _BASE64_LINE)
    ]
    return b"\r\n".join(lines) + b"\r\n"


def _boundary(message_id: str) -> bytes:
    # Derived from the Message-ID, so one delivery always gives the same bytes.
    digest = hashlib.sha256(message_id.encode("utf-8")).hexdigest()[:24]
    return b"=_carepost_" + digest.encode("ascii")
