"""Connection pools of the sender and the per-domain rate limit.

`SessionPool` keeps verified sessions to one host open between messages
(RSET before each reuse) and bounds how many send at once. A session that
got 421, timed out or broke is discarded, and the next message opens a new
one. `DomainRateLimiter` spaces messages to one recipient domain with a
token bucket.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from carepost.connectors.smtp_session import (
    Reply,
    SessionConfig,
    SmtpSession,
    TransportError,
    open_session,
)
from carepost.connectors.smtp_tls import TlsDetails
from carepost.core.states import DeliveryState

__all__ = ["DomainRateLimiter", "PoolResult", "SessionPool", "TokenBucket"]

logger = logging.getLogger("carepost.connectors.smtp")


@dataclass(frozen=True)
class PoolResult:
    """The end state of one message on a pool, with the TLS session it used.

    ``connected`` is False when no session could be opened, so nothing of
    the message reached the host and another host may be tried.
    """

    state: DeliveryState
    reason: str | None
    smtp_code: int | None
    tls: TlsDetails | None
    connected: bool
    error: TransportError | None = None


class SessionPool:
    """Up to ``max_connections`` reusable sessions to one host."""

    def __init__(self, config: SessionConfig, max_connections: int) -> None:
        self.config = config
        self.sessions_opened = 0
        self._idle: list[SmtpSession] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    async def send(
        self,
        envelope_from: str,
        recipient: str,
        data: bytes,
        *,
        smtputf8: bool = False,
        deadline: float | None = None,
    ) -> PoolResult:
        """Send one message on a pooled session; every failure is a result."""
        async with self._slots:
            try:
                session = await self._checkout()
            except TransportError as exc:
                return PoolResult(exc.state, exc.reason, exc.smtp_code, exc.tls,
                                  connected=False, error=exc)
            try:
                reply = await session.transmit(envelope_from, recipient, data,
                                               smtputf8=smtputf8, deadline=deadline)
            except TransportError as exc:
                session.close()
                return PoolResult(exc.state, exc.reason, exc.smtp_code, session.tls,
                                  connected=True, error=exc)
            except BaseException:
                session.close()
                raise
            self._checkin(session)
            return _result(reply, session.tls)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(session.quit() for session in idle))

    async def _checkout(self) -> SmtpSession:
        while self._idle:
            session = self._idle.pop()
            if session.is_usable and await session.reset():
                return session
            # The server dropped the idle connection or refused RSET. Nothing
            # of a message was sent on it yet, so opening a new one is safe.
            logger.debug("discarded an idle SMTP connection that failed RSET")
            session.close()

        session = await open_session(self.config)
        self.sessions_opened += 1
        logger.info(
            "SMTP connection opened to %s port %d over %s %s, certificate sha256 %s%s",
            self.config.tls_server_name or self.config.host,
            self.config.port,
            session.tls.version,
            session.tls.cipher,
            session.tls.cert_sha256,
            "" if session.tls.verified else " (not verified)",
        )
        return session

    def _checkin(self, session: SmtpSession) -> None:
        if session.is_usable and not self._closed:
            self._idle.append(session)
        else:
            session.close()


def _result(reply: Reply, tls: TlsDetails) -> PoolResult:
    return PoolResult(reply.state, reply.reason, reply.smtp_code, tls, connected=True)


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._updated = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait until a token is available and take it."""
        async with self._lock:
            while True:
                now = self._clock()
                elapsed = now - self._updated
                self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self._rate)


class DomainRateLimiter:
    """One `TokenBucket` per recipient domain; no limit when ``rate`` is None."""

    def __init__(self, rate: float | None, burst: int) -> None:
        self._rate = rate
        self._burst = burst
        self._buckets: dict[str, TokenBucket] = {}

    async def acquire(self, domain: str) -> None:
        if self._rate is None:
            return
        bucket = self._buckets.get(domain)
        if bucket is None:
            bucket = self._buckets[domain] = TokenBucket(self._rate, self._burst)
        await bucket.acquire()
