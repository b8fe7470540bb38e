"""MX lookup for direct-to-MX delivery (RFC 5321 section 5.1, RFC 7505).

`MxResolver.route(domain)` returns the hosts to try for one recipient
domain, best first:

- MX records sorted by preference, lowest first. Records of equal
  preference are shuffled (RFC 5321 section 5.1 recommends spreading
  load across them), with the injectable ``rng`` so tests can fix the
  order.
- No MX records but the name exists: the domain itself is the implicit MX
  with preference 0, and its A/AAAA records are used.
- A null MX (one MX record ``0 .``, RFC 7505) means the domain accepts no
  mail: `NullMxError`. A ``.`` listed next to real hosts is ignored.
- The domain does not exist (NXDOMAIN): `DomainNotFoundError`.
- Any other DNS failure (timeout, SERVFAIL) is temporary:
  `DnsLookupError`, which the sender defers.

Domains are converted to their ASCII form (IDNA 2008 with UTS 46 mapping)
before any lookup, so ``bücher.example`` is looked up as
``xn--bcher-kva.example``. The resolver is a dnspython
`dns.asyncresolver.Resolver`: the system's by default, or one aimed at a
test server on 127.0.0.1.

Errors::

    CarepostError
    └── MxError            no route to the domain; ``domain`` is ASCII
        ├── NullMxError          permanent: the domain publishes a null MX
        ├── DomainNotFoundError  permanent: NXDOMAIN
        └── DnsLookupError       temporary: try again later
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver
import idna

from carepost.core.errors import CarepostError

__all__ = [
    "DnsLookupError",
    "DomainNotFoundError",
    "MxError",
    "MxHost",
    "MxResolver",
    "NullMxError",
    "Route",
    "to_ascii_domain",
]

DEFAULT_LIFETIME_SECONDS = 10.0


class MxError(CarepostError):
    """No mail route to a domain; ``permanent`` separates a bounce from a deferral."""

    permanent = False

    def __init__(self, domain: str, problem: str) -> None:
        self.domain = domain
        # ``problem`` never names the domain, so it can go into the ledger.
        self.problem = problem
        super().__init__(f"{domain}: {problem}")


class NullMxError(MxError):
    permanent = True


class DomainNotFoundError(MxError):
    permanent = True


class DnsLookupError(MxError):
    permanent = False


@dataclass(frozen=True)
class MxHost:
    """One mail exchanger: its ASCII host name (no trailing dot) and preference."""

    name: str
    preference: int


@dataclass(frozen=True)
class Route:
    """The hosts to try for a domain, best first; ``implicit`` when no MX exists."""

    domain: str
    hosts: tuple[MxHost, ...]
    implicit: bool = False


def to_ascii_domain(domain: str) -> str:
    """Return the lower-case ASCII (A-label) form of a domain name.

    Raises ValueError naming the problem when the name is not a valid IDN.
    """
    name = domain.strip().rstrip(".")
    if name.isascii():
        return name.lower()
    try:
        return idna.encode(name, uts46=True).decode("ascii").lower()
    except idna.IDNAError as exc:
        raise ValueError(f"invalid internationalised domain name: {exc}") from None


def _host_name(text: str) -> str:
    return text.rstrip(".").lower()


class MxResolver:
    """Look up MX, address and TXT records through one dnspython resolver."""

    def __init__(
        self,
        resolver: dns.asyncresolver.Resolver | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        if resolver is None:
            resolver = dns.asyncresolver.Resolver()
            resolver.lifetime = DEFAULT_LIFETIME_SECONDS
        self._resolver = resolver
        self._rng = rng or random.Random()

    async def route(self, domain: str) -> Route:
        """Return the MX hosts of ``domain`` in the order to try them."""
        name = to_ascii_domain(domain)
        try:
            answer = await self._resolver.resolve(name, "MX", search=False)
        except dns.resolver.NXDOMAIN:
            raise DomainNotFoundError(name, "the domain does not exist") from None
        except dns.resolver.NoAnswer:
            # RFC 5321 section 5.1: no MX records means the domain itself is
            # the implicit MX, if it has an address.
            if not await self.addresses(name):
                raise DomainNotFoundError(name, "no MX and no address records") from None
            return Route(name, (MxHost(name, 0),), implicit=True)
        except dns.exception.DNSException as exc:
            raise DnsLookupError(name, f"MX lookup failed: {type(exc).__name__}") from None

        records = [(int(r.preference), _host_name(r.exchange.to_text())) for r in answer]
        hosts = [MxHost(host, preference) for preference, host in records if host]
        if not hosts:
            # RFC 7505: "0 ." alone means the domain accepts no mail.
            raise NullMxError(name, "the domain publishes a null MX and accepts no mail")
        return Route(name, self._ordered(hosts))

    def _ordered(self, hosts: list[MxHost]) -> tuple[MxHost, ...]:
        shuffled = list(hosts)
        self._rng.shuffle(shuffled)
        # sorted() is stable, so equal preferences keep the shuffled order.
        return tuple(sorted(shuffled, key=lambda host: host.preference))

    async def addresses(self, host: str) -> list[str]:
        """Return the IPv4 then IPv6 addresses of ``host``; empty if none exist.

        Raises `DnsLookupError` on a temporary failure of both lookups.
        """
        found: list[str] = []
        failures = 0
        for record_type in ("A", "AAAA"):
            try:
                answer = await self._resolver.resolve(host, record_type, search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException:
                failures += 1
                continue
            found.extend(record.to_text() for record in answer)
        if not found and failures == 2:
            raise DnsLookupError(host, "address lookup failed")
        return found

    async def txt(self, name: str) -> list[str]:
        """Return the TXT strings at ``name`` (each record's parts joined).

        A missing name or record type gives an empty list; other failures
        raise `DnsLookupError`.
        """
        try:
            answer = await self._resolver.resolve(name, "TXT", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise DnsLookupError(name, f"TXT lookup failed: {type(exc).__name__}") from None
        return [
            b"".join(record.strings).decode("utf-8", "replace") for record in answer
        ]
