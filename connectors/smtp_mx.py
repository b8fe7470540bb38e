"""Direct-to-MX routing of the TLS-exclusive sender (``smtp.mode: mx``).

For each recipient domain `MxRouter`:

1. looks up its MX hosts (`mx.MxResolver`): a null MX or a domain that
   does not exist bounces the message and suppresses the address, and a
   DNS failure defers it;
2. finds its MTA-STS policy (`mta_sts.MtaStsFetcher`). Under ``enforce``
   only MX hosts that match a policy pattern are tried, and their
   certificates must verify. ``testing`` never blocks: a mismatch is
   logged and the host is still tried. Without a policy, or under
   ``testing``, the certificate is verified unless ``smtp.unverified_mx``
   is ``encrypt``;
3. tries the hosts in order over STARTTLS on port 25, one pool of reused
   sessions per host (connected by address, verified by host name). A
   host that cannot be reached or fails TLS before any mail command is
   passed over for the next one;
4. records the domain's TLS status (`tls_status.TlsStatusStore`).

TLS 1.2+ is required on every path: no host is ever sent mail in clear.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from carepost.connectors.mta_sts import MtaStsFetcher, StsMode, StsPolicy
from carepost.connectors.mx import DnsLookupError, MxError, MxHost, MxResolver
from carepost.connectors.smtp_pool import PoolResult, SessionPool
from carepost.connectors.smtp_session import SessionConfig, TlsRequiredError
from carepost.connectors.smtp_tls import (
    build_client_context,
    build_unverified_context,
    is_accepted_version,
)
from carepost.connectors.tls_status import DomainStatus, TlsStatusStore
from carepost.core.settings import SmtpSettings
from carepost.core.states import DeliveryState

__all__ = ["MX_PORT", "MxResult", "MxRouter", "status_from_failure"]

logger = logging.getLogger("carepost.connectors.smtp")

MX_PORT = 25


@dataclass(frozen=True)
class MxResult:
    """A pool result with the MX host it went to and whether to suppress."""

    result: PoolResult
    mx_host: str | None = None
    mta_sts_mode: str | None = None
    suppress: bool = False


class MxRouter:
    """Send each message to its recipient domain's MX hosts.

    ``mx_ports`` maps MX host names to ports for tests only, so several
    test servers on 127.0.0.1 can stand in for different MX hosts;
    production code leaves it unset and uses port 25.
    """

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        resolver: MxResolver,
        store: TlsStatusStore,
        mta_sts: MtaStsFetcher,
        ca_file: str | Path | None = None,
        mx_ports: Mapping[str, int] | None = None,
    ) -> None:
        self._settings = settings
        self._resolver = resolver
        self._store = store
        self._mta_sts = mta_sts
        self._verifying = build_client_context(ca_file)
        self._unverified = build_unverified_context()
        self._mx_ports = dict(mx_ports or {})
        self._pools: dict[tuple[str, str, bool], SessionPool] = {}
        self._status_recorded: set[str] = set()
        self._closed_sessions = 0

    @property
    def sessions_opened(self) -> int:
        open_pools = sum(pool.sessions_opened for pool in self._pools.values())
        return self._closed_sessions + open_pools

    async def close(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        self._closed_sessions += sum(pool.sessions_opened for pool in pools)
        await asyncio.gather(*(pool.close() for pool in pools))

    def refusal(self, domain: str) -> str | None:
        """Return why ``domain`` is known, as of today, not to take TLS mail."""
        status = self._store.fresh(domain)
        if status is None:
            return None
        # The reason goes to the ledger and the CDP, so it never names the
        # domain: a domain is part of the patient's address.
        checked = f"checked {status.checked_at:%Y-%m-%dT%H:%MZ}"
        if status.starttls_offered is False:
            return f"the recipient domain's MX offers no STARTTLS ({checked})"
        if status.tls_version and not is_accepted_version(status.tls_version):
            return f"the recipient domain's MX negotiated {status.tls_version} ({checked})"
        if status.cert_verified is False and self._settings.unverified_mx == "drop":
            return f"the recipient domain's MX certificate did not verify ({checked})"
        return None

    async def send(self, envelope_from: str, recipient: str, data: bytes, *,
                   smtputf8: bool, deadline: float | None) -> MxResult:
        """Deliver one message to the MX hosts of the recipient's domain."""
        domain = recipient.rpartition("@")[2]
        try:
            route = await self._resolver.route(domain)
        except MxError as exc:
            state = DeliveryState.BOUNCED if exc.permanent else DeliveryState.DEFERRED
            reason = f"undeliverable: {exc.problem}" if exc.permanent else exc.problem
            failed = PoolResult(state, reason, None, None, connected=False)
            return MxResult(failed, suppress=exc.permanent)

        policy = await self._mta_sts.policy_for(domain)
        mode = policy.mode.value if policy is not None else None
        hosts = self._allowed_hosts(domain, route.hosts, policy)
        if not hosts:
            reason = "no MX host matches the domain's MTA-STS policy (enforce)"
            self._record(DomainStatus(domain, route.hosts[0].name, MX_PORT, None, None,
                                      None, None, mode, reason, _now()))
            dropped = PoolResult(DeliveryState.DROPPED_NO_TLS, reason, None, None,
                                 connected=False)
            return MxResult(dropped, mta_sts_mode=mode)

        verify = (policy is not None and policy.mode is StsMode.ENFORCE) or \
            self._settings.unverified_mx == "drop"
        failures: list[PoolResult] = []
        for host in hosts:
            attempt = await self._try_host(domain, host, verify, mode, envelope_from,
                                           recipient, data, smtputf8, deadline)
            if attempt.result.connected:
                return attempt
            failures.append(attempt.result)
        return MxResult(_combined(failures), mta_sts_mode=mode)

    def _allowed_hosts(self, domain: str, hosts: tuple[MxHost, ...],
                       policy: StsPolicy | None) -> list[MxHost]:
        if policy is None or policy.mode is StsMode.NONE:
            return list(hosts)
        allowed = [host for host in hosts if policy.allows(host.name)]
        if policy.mode is StsMode.TESTING:
            for host in hosts:
                if host not in allowed:
                    logger.warning("MTA-STS testing: MX %s is not in the domain's "
                                   "policy; sending anyway", host.name)
            return list(hosts)
        return allowed

    async def _try_host(self, domain: str, host: MxHost, verify: bool,
                        mode: str | None, envelope_from: str, recipient: str,
                        data: bytes, smtputf8: bool, deadline: float | None
                        ) -> MxResult:
        try:
            addresses = await self._resolver.addresses(host.name)
        except DnsLookupError as exc:
            addresses, reason = [], exc.problem
        else:
            reason = "an MX host has no address"
        if not addresses:
            failed = PoolResult(DeliveryState.DEFERRED, reason, None, None,
                                connected=False)
            return MxResult(failed, host.name, mode)

        pool = self._pool(host.name, addresses[0], verify)
        result = await pool.send(envelope_from, recipient, data,
                                 smtputf8=smtputf8, deadline=deadline)
        self._record_result(domain, host.name, pool.config.port, result, mode)
        return MxResult(result, host.name, mode)

    def _pool(self, host: str, address: str, verify: bool) -> SessionPool:
        key = (host, address, verify)
        pool = self._pools.get(key)
        if pool is None:
            config = SessionConfig(
                host=address, port=self._mx_ports.get(host, MX_PORT),
                implicit_tls=False, helo_name=self._settings.helo_name,
                timeout_seconds=self._settings.timeout_seconds,
                context=self._verifying if verify else self._unverified,
                username=None, password=None, tls_server_name=host,
                connect_timeout_seconds=self._settings.connect_timeout_seconds,
                verify_certificate=verify,
            )
            # NOTE: idle sessions are kept per host until the sender closes,
            # so many MX hosts can hold more than max_connections open.
            pool = SessionPool(config, self._settings.max_connections_per_host)
            self._pools[key] = pool
        return pool

    def _record_result(self, domain: str, host: str, port: int, result: PoolResult,
                       mode: str | None) -> None:
        if result.connected and result.tls is not None:
            if domain in self._status_recorded:
                return
            self._status_recorded.add(domain)
            self._record(DomainStatus(domain, host, port, True, result.tls.version,
                                      result.tls.cipher, result.tls.verified, mode,
                                      None, _now()))
        elif isinstance(result.error, TlsRequiredError):
            self._status_recorded.discard(domain)
            self._record(replace(status_from_failure(domain, host, port, result.error),
                                 mta_sts_mode=mode))

    def _record(self, status: DomainStatus) -> None:
        self._store.record(status)


def status_from_failure(domain: str, host: str, port: int,
                        error: TlsRequiredError) -> DomainStatus:
    """Describe a domain whose MX failed the TLS step."""
    offered = "did not offer STARTTLS" not in error.reason
    verified = False if "certificate verification failed" in error.reason else None
    tls = error.tls
    return DomainStatus(domain, host, port, offered,
                        tls.version if tls else None, tls.cipher if tls else None,
                        verified, None, error.reason, _now())


def _combined(failures: list[PoolResult]) -> PoolResult:
    """Pick the outcome when no MX host took the message.

    A temporary failure on any host defers (that host may come back); only
    when every host failed TLS is the message dropped.
    """
    temporary = [f for f in failures if f.state is not DeliveryState.DROPPED_NO_TLS]
    if temporary or not failures:
        reason = temporary[-1].reason if temporary else "the domain has no MX host"
        return PoolResult(DeliveryState.DEFERRED, reason, None, None, connected=False)
    return failures[-1]


def _now() -> datetime:
    return datetime.now(UTC)
