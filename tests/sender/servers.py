"""Programmable aiosmtpd servers on 127.0.0.1 for the sender tests.

A `RecordingServer` runs aiosmtpd in a thread and records, from the server
side, every command each session sent (and whether it arrived encrypted),
every byte received before TLS, and the raw content of each DATA. A
`Script` makes it misbehave the ways real relays and attackers do: no
STARTTLS, a 454 reply to STARTTLS, TLS 1.0/1.1 only, a bad certificate, 421
after N messages, a rejected sender or recipient, a connection dropped at
DATA, a lost or late final reply. aiosmtpd reads commands line by line, so
it serves pipelined commands, and a `Script` decides whether EHLO
advertises PIPELINING. `encrypted_reads` keeps each chunk of bytes that
arrived over TLS, so a test can see which commands came in one write.

The servers do not require STARTTLS before MAIL, so a client that sent MAIL
in clear would be recorded here instead of being stopped by a 530.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import socket
import ssl
import threading
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from carepost.connectors.local_smtp import LoopbackController

HOST = "127.0.0.1"


@dataclass
class Script:
    """How a test server deviates from a well-behaved STARTTLS relay."""

    offer_starttls: bool = True
    starttls_reply: str | None = None
    ehlo_delay_seconds: float = 0.0
    accept_messages: int | None = None
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    # How many times each rcpt_replies entry applies; None: every time.
    rcpt_reply_limit: int | None = None
    data_reply: str | None = None
    data_delay_seconds: float = 0.0
    close_after_data: bool = False
    credentials: tuple[str, str] | None = None
    idle_timeout_seconds: float = 300.0
    offer_smtputf8: bool = False
    # "never", "always", or "before_tls": in the EHLO reply before STARTTLS
    # only, which must not make the client pipeline over TLS.
    advertise_pipelining: str = "never"
    # A reply to the first mail_reply_limit MAIL commands (None: every one).
    mail_reply: str | None = None
    mail_reply_limit: int | None = None
    # Close the connection, without a reply, on this many DATA commands.
    drop_at_data: int = 0
    # Keep a recipient that rcpt_replies rejected, so DATA gets 354 anyway,
    # as a server that breaks RFC 2920 section 3.1 would.
    data_despite_rejection: bool = False


@dataclass(frozen=True)
class Command:
    """One command line as the server parsed it."""

    session: int
    verb: str
    argument: str | None
    encrypted: bool


@dataclass
class Certificates:
    """A trusted test CA (written to ``ca_file``) and server certificates."""

    ca_file: Path
    ca: trustme.CA
    good: trustme.LeafCert
    wrong_host: trustme.LeafCert
    expired: trustme.LeafCert
    untrusted: trustme.LeafCert

    @classmethod
    def create(cls, folder: Path) -> Certificates:
        trusted = trustme.CA()
        stranger = trustme.CA()
        now = datetime.datetime.now(datetime.timezone.utc)
        ca_file = folder / "test-ca.pem"
        trusted.cert_pem.write_to_path(str(ca_file))
        return cls(
            ca_file=ca_file,
            ca=trusted,
            good=trusted.issue_cert("localhost", HOST),
            wrong_host=trusted.issue_cert("mail.other.example.test"),
            expired=trusted.issue_cert(
                "localhost",
                HOST,
                not_before=now - datetime.timedelta(days=30),
                not_after=now - datetime.timedelta(days=1),
            ),
            untrusted=stranger.issue_cert("localhost", HOST),
        )


def server_context(
    certificate: trustme.LeafCert,
    *,
    legacy_tls_only: bool = False,
    static_rsa_only: bool = False,
) -> ssl.SSLContext:
    """Create a server context.

    ``legacy_tls_only`` serves TLS 1.0 and 1.1 only. ``static_rsa_only``
    serves TLS 1.2 with RSA key exchange suites only (no forward secrecy).
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if static_rsa_only:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("AES256-SHA256:AES128-GCM-SHA256:AES256-GCM-SHA384")
    if legacy_tls_only:
        # Python 3.10+ flags the TLSv1/TLSv1_1 members as deprecated, and
        # OpenSSL 3 needs security level 0 for their SHA-1 signatures.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    certificate.configure_cert(context)
    return context


def build_message(recipient: str, body: str = "Your flu shot is due.") -> bytes:
    """Return a small RFC 5322 message addressed to ``recipient``."""
    return (
        "From: Example Clinic <clinic@example.org>\r\n"
        f"To: {recipient}\r\n"
        "Subject: A reminder from your clinic\r\n"
        "Message-ID: <test@carepost.example.test>\r\n"
        "\r\n"
        f"{body}\r\n"
    ).encode("ascii")


def read_reply(connection: socket.socket) -> bytes:
    """Read one whole SMTP reply, byte by byte so no TLS byte is consumed."""
    reply = b""
    while True:
        line = b""
        while not line.endswith(b"\r\n"):
            line += connection.recv(1)
        reply += line
        if line[3:4] != b"-":
            return reply


class RecordingServer:
    """An aiosmtpd server in a thread that follows a `Script` and records."""

    def __init__(
        self,
        context: ssl.SSLContext | None,
        script: Script | None = None,
        *,
        implicit_tls: bool = False,
    ) -> None:
        self.host = HOST
        self.port = 0
        self.script = script or Script()
        self.commands: list[Command] = []
        self.messages: list[bytes] = []
        self.logins: list[tuple[str, str, bool]] = []
        self.plaintext = bytearray()
        self.encrypted_reads: list[bytes] = []
        self.errors: list[str] = []
        self.tls_versions: list[str] = []
        self.accepted = 0
        self.max_concurrent_data = 0
        self._context = context
        self._implicit_tls = implicit_tls
        self._sessions = 0
        self._replies_used: dict[str, int] = {}
        self._mail_replies_used = 0
        self._data_drops = 0
        self._data_in_progress = 0
        self._lock = threading.Lock()
        self._controller: LoopbackController | None = None

    # --- what the tests read ---

    def verbs(self) -> list[str]:
        return [command.verb for command in self.commands]

    def count(self, verb: str) -> int:
        return sum(1 for command in self.commands if command.verb == verb)

    @property
    def sessions(self) -> int:
        """Number of connections that sent at least one command."""
        return self._sessions

    @property
    def tls_sessions(self) -> int:
        """Number of connections that sent a command over TLS."""
        return len(self.tls_versions)

    # --- lifecycle ---

    def start(self) -> RecordingServer:
        starttls_context = None if self._implicit_tls else self._context
        if not self.script.offer_starttls:
            starttls_context = None
        self._controller = _ScriptedController(
            self,
            hostname=HOST,
            port=0,
            server_hostname="localhost",
            ssl_context=self._context if self._implicit_tls else None,
            tls_context=starttls_context,
            require_starttls=False,
            # Only the server without STARTTLS advertises AUTH in clear, so a
            # test can show the client never uses it there.
            auth_require_tls=self.script.offer_starttls,
            authenticator=self._authenticate,
            timeout=self.script.idle_timeout_seconds,
            enable_SMTPUTF8=self.script.offer_smtputf8,
        )
        self._controller.start()
        self.port = self._controller.port
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> RecordingServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # --- hooks called from the server thread ---

    def _use_reply(self, address: str) -> bool:
        with self._lock:
            used = self._replies_used.get(address, 0)
            limit = self.script.rcpt_reply_limit
            if limit is not None and used >= limit:
                return False
            self._replies_used[address] = used + 1
            return True

    def _use_mail_reply(self) -> bool:
        with self._lock:
            limit = self.script.mail_reply_limit
            if limit is not None and self._mail_replies_used >= limit:
                return False
            self._mail_replies_used += 1
            return True

    def _use_data_drop(self) -> bool:
        with self._lock:
            if self._data_drops >= self.script.drop_at_data:
                return False
            self._data_drops += 1
            return True

    def _new_session(self) -> int:
        with self._lock:
            self._sessions += 1
            return self._sessions

    def _record(self, command: Command, tls_version: str | None) -> None:
        with self._lock:
            first_encrypted = command.encrypted and not any(
                earlier.session == command.session and earlier.encrypted
                for earlier in self.commands
            )
            if first_encrypted and tls_version:
                self.tls_versions.append(tls_version)
            self.commands.append(command)

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        encrypted = session.ssl is not None or self._implicit_tls
        # handled=False makes aiosmtpd send its 535 reply on failure.
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode()
        password = auth_data.password.decode()
        self.logins.append((login, password, encrypted))
        accepted = (login, password) == self.script.credentials
        return AuthResult(success=accepted, handled=False)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        # aiosmtpd 1.4 leaves setting host_name to a five-argument hook;
        # without it MAIL gets "503 send HELO first".
        session.host_name = hostname
        encrypted = session.ssl is not None or self._implicit_tls
        mode = self.script.advertise_pipelining
        if mode == "always" or (mode == "before_tls" and not encrypted):
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_exception(self, error: Exception) -> str:
        # A failed TLS handshake lands here; aiosmtpd would log a traceback.
        self.errors.append(type(error).__name__)
        return "451 4.3.0 test server error"

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        with self._lock:
            self.messages.append(bytes(envelope.original_content or b""))
            self._data_in_progress += 1
            self.max_concurrent_data = max(
                self.max_concurrent_data, self._data_in_progress
            )
        try:
            return await self._final_reply(server)
        finally:
            with self._lock:
                self._data_in_progress -= 1

    async def _final_reply(self, server: SMTP) -> str:
        if self.script.close_after_data:
            assert server.transport is not None
            server.transport.close()
            # connection_lost cancels this coroutine, so no reply is written.
            await asyncio.sleep(3600)
        if self.script.data_delay_seconds:
            await asyncio.sleep(self.script.data_delay_seconds)
        if self.script.data_reply:
            return self.script.data_reply
        with self._lock:
            self.accepted += 1
        return "250 2.0.0 OK"


class _ScriptedSMTP(SMTP):
    """One server-side session: records commands and applies the script."""

    def __init__(self, recorder: RecordingServer, **kwargs: Any) -> None:
        super().__init__(recorder, **kwargs)
        self._recorder = recorder
        self._script = recorder.script
        self._session_number: int | None = None
        self._smtp_methods = {
            verb: self._recording(verb, method)
            for verb, method in self._smtp_methods.items()
        }

    @property
    def _encrypted(self) -> bool:
        return self._recorder._implicit_tls or self._tls_protocol is not None

    def data_received(self, data: bytes) -> None:
        if self._encrypted:
            self._recorder.encrypted_reads.append(bytes(data))
        else:
            self._recorder.plaintext.extend(data)
        super().data_received(data)

    def _recording(
        self, verb: str, method: Callable[[str | None], Awaitable[None]]
    ) -> Callable[[str | None], Awaitable[None]]:
        @functools.wraps(method)
        async def record_then_run(argument: str | None) -> None:
            if self._session_number is None:
                self._session_number = self._recorder._new_session()
            command = Command(self._session_number, verb, argument, self._encrypted)
            self._recorder._record(command, self._tls_version())
            await method(argument)

        return record_then_run

    def _tls_version(self) -> str | None:
        if self.transport is None:
            return None
        ssl_object = self.transport.get_extra_info("ssl_object")
        return ssl_object.version() if ssl_object is not None else None

    async def _close_with(self, reply: str) -> None:
        await self.push(reply)
        assert self.transport is not None
        self.transport.close()

    async def smtp_EHLO(self, hostname: str) -> None:
        if self._script.ehlo_delay_seconds:
            await asyncio.sleep(self._script.ehlo_delay_seconds)
        await super().smtp_EHLO(hostname)

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._script.starttls_reply:
            await self.push(self._script.starttls_reply)
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        limit = self._script.accept_messages
        if limit is not None and self._recorder.accepted >= limit:
            await self._close_with("421 4.4.2 closing connection")
            return
        if self._script.mail_reply and self._recorder._use_mail_reply():
            await self.push(self._script.mail_reply)
            return
        await super().smtp_MAIL(arg)

    async def smtp_DATA(self, arg: str) -> None:
        if self._script.drop_at_data and self._recorder._use_data_drop():
            assert self.transport is not None
            self.transport.close()
            return
        await super().smtp_DATA(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        for address, reply in self._script.rcpt_replies.items():
            if arg and f"<{address}>" in arg and self._recorder._use_reply(address):
                if reply.startswith("421"):
                    await self._close_with(reply)
                    return
                await self.push(reply)
                if self._script.data_despite_rejection and self.envelope is not None:
                    self.envelope.rcpt_tos.append(address)
                return
        await super().smtp_RCPT(arg)


class _ScriptedController(LoopbackController):
    def __init__(self, recorder: RecordingServer, **kwargs: Any) -> None:
        super().__init__(recorder, **kwargs)
        self._recorder = recorder

    def factory(self) -> SMTP:
        return _ScriptedSMTP(self._recorder, **self.SMTP_kwargs)
