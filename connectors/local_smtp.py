"""A throwaway STARTTLS-only SMTP server that stores mail in a Maildir.

`LocalTlsSmtpServer` is what ``carepost demo`` delivers to. It creates a
private CA and a server certificate for ``localhost`` and ``127.0.0.1``
with trustme, writes the CA certificate to ``ca_file`` for the sender to
trust, and runs aiosmtpd in a background thread. It requires STARTTLS
before MAIL (RFC 3207 section 4) and accepts TLS 1.2 or newer only, so the
demo exercises the same verified path as a production relay.

aiosmtpd logs envelope addresses and command lines at INFO and DEBUG on the
``mail.log`` logger, so starting a server drops that logger's records below
WARNING; session errors are logged by type on
``carepost.connectors.local_smtp``.
"""

from __future__ import annotations

import logging
import mailbox
import shutil
import ssl
import tempfile
import threading
from pathlib import Path
from types import TracebackType

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = ["LocalTlsSmtpServer", "LoopbackController"]

logger = logging.getLogger("carepost.connectors.local_smtp")

_SERVER_NAME = "localhost"


class LoopbackController(Controller):
    """aiosmtpd's threaded `Controller`, able to listen on an OS-chosen port.

    aiosmtpd 1.4 binds port 0 correctly but then opens its readiness probe
    connection to port 0, so this reads the bound port first.
    """

    def _trigger_server(self) -> None:
        if self.server is not None and self.server.sockets:
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def _quiet_aiosmtpd_log() -> None:
    mail_log = logging.getLogger("mail.log")
    if not any(isinstance(item, _BelowWarning) for item in mail_log.filters):
        mail_log.addFilter(_BelowWarning())


class _MaildirHandler:
    """aiosmtpd handler that stores each accepted message in a Maildir."""

    def __init__(self, maildir: mailbox.Maildir) -> None:
        self.messages_received = 0
        self._maildir = maildir
        self._lock = threading.Lock()

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        content = envelope.original_content or b""
        with self._lock:
            self._maildir.add(content)
            self.messages_received += 1
        return "250 2.0.0 OK: stored"

    async def handle_exception(self, error: Exception) -> str:
        # The type only: exception texts from parsing can quote an address.
        logger.warning("local SMTP session failed: %s", type(error).__name__)
        return "451 4.3.0 local server error, try again"


class LocalTlsSmtpServer:
    """Run a STARTTLS-required SMTP server on loopback that fills a Maildir.

    Use as a context manager or call `start` and `stop`. ``port=0`` lets
    the operating system pick a free port, and ``port`` returns the chosen
    one after `start`.
    """

    def __init__(self, maildir: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.maildir = Path(maildir)
        self.host = host
        self.port = port
        self._requested_port = port
        self._controller: LoopbackController | None = None
        self._handler: _MaildirHandler | None = None
        self._certificate_folder: Path | None = None
        self._ca_file: Path | None = None

    @property
    def ca_file(self) -> Path:
        """PEM file of the throwaway CA that signed the server certificate."""
        if self._ca_file is None:
            raise RuntimeError("the local SMTP server is not started")
        return self._ca_file

    @property
    def messages_received(self) -> int:
        """Number of messages accepted and stored since `start`."""
        return self._handler.messages_received if self._handler else 0

    def start(self) -> None:
        """Create the certificates, open the Maildir and start listening."""
        if self._controller is not None:
            raise RuntimeError("the local SMTP server is already running")
        _quiet_aiosmtpd_log()

        folder = Path(tempfile.mkdtemp(prefix="carepost-smtp-"))
        try:
            context = self._make_certificates(folder)
            self._handler = _MaildirHandler(mailbox.Maildir(self.maildir, create=True))
            controller = LoopbackController(
                self._handler,
                hostname=self.host,
                port=self._requested_port,
                server_hostname=_SERVER_NAME,
                tls_context=context,
                require_starttls=True,
            )
            controller.start()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            self._handler = None
            raise

        self._certificate_folder = folder
        self._controller = controller
        self.port = controller.port
        logger.info("local SMTP server listening on %s:%d", self.host, self.port)

    def stop(self) -> None:
        """Stop the server and delete the throwaway CA, keeping the Maildir."""
        controller, self._controller = self._controller, None
        if controller is None:
            return
        controller.stop()
        if self._certificate_folder is not None:
            shutil.rmtree(self._certificate_folder, ignore_errors=True)
        self._certificate_folder = None
        self._ca_file = None
        logger.info("local SMTP server on %s:%d stopped", self.host, self.port)

    def __enter__(self) -> LocalTlsSmtpServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._controller else "stopped"
        return f"LocalTlsSmtpServer({self.host}:{self.port}, {state})"

    def _make_certificates(self, folder: Path) -> ssl.SSLContext:
        authority = trustme.CA(organization_name="carepost local SMTP")
        identities: list[str] = [_SERVER_NAME, "127.0.0.1"]
        if self.host not in identities:
            identities.append(self.host)
        certificate = authority.issue_cert(*identities)

        self._ca_file = folder / "local-smtp-ca.pem"
        authority.cert_pem.write_to_path(str(self._ca_file))

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        certificate.configure_cert(context)
        return context
