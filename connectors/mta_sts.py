"""MTA-STS (RFC 8461): discover, fetch, cache and apply a domain's policy.

Discovery is the TXT record ``_mta-sts.<domain>``, ``v=STSv1; id=...``.
Exactly one record starting ``v=STSv1`` counts; none, several or a
malformed one means no usable record (RFC 8461 section 3.1).

The policy is ``https://mta-sts.<domain>/.well-known/mta-sts.txt``,
fetched with a verified certificate for ``mta-sts.<domain>``, with no
redirect followed, no HTTP cache, a 200 status and ``text/plain`` only,
and at most 64 KiB. Parsing (`parse_policy`):

- lines end in LF or CRLF, a final newline is optional, and trailing
  blanks after a value are ignored;
- keys and values are case-sensitive (``Mode: Enforce`` is invalid);
- ``version: STSv1``, ``mode`` and ``max_age`` are required, and ``mx`` is
  required unless the mode is ``none``; only ``mx`` may repeat, so a second
  ``mode`` or ``max_age`` rejects the whole policy;
- ``max_age`` above 31557600 seconds (about a year) is capped to it;
- unknown keys are ignored.

Caching (`MtaStsFetcher.policy_for`): a policy is used until ``max_age``
after its fetch. It is fetched again when the TXT ``id`` differs from the
cached one. When the TXT record is missing or the fetch fails, an
unexpired cached policy stays in force (this is what defeats an attacker
who strips the TXT record). A fetched ``mode: none`` removes the cached
policy.

Errors::

    CarepostError
    └── PolicyError   the policy text is invalid; the message names the line
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol

import httpx

from carepost.connectors.mx import MxError, MxResolver, to_ascii_domain
from carepost.core.errors import CarepostError

__all__ = [
    "MAX_AGE_CAP_SECONDS",
    "MAX_POLICY_BYTES",
    "CachedPolicy",
    "MemoryPolicyCache",
    "MtaStsFetcher",
    "PolicyCache",
    "PolicyError",
    "StsMode",
    "StsPolicy",
    "mx_pattern_matches",
    "parse_policy",
    "parse_txt_id",
]

log = logging.getLogger(__name__)

MAX_AGE_CAP_SECONDS = 31_557_600
MAX_POLICY_BYTES = 64 * 1024
FETCH_TIMEOUT_SECONDS = 10.0

_KEY_VALUE = re.compile(r"^([A-Za-z0-9_]+):[ \t]*(.*?)[ \t]*$")
_MAX_AGE = re.compile(r"^[0-9]{1,10}$")
_TXT_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_MX_PATTERN = re.compile(rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})+$")


class PolicyError(CarepostError):
    """An MTA-STS policy file that does not follow RFC 8461 section 3.2."""


class StsMode(StrEnum):
    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


@dataclass(frozen=True)
class StsPolicy:
    """A parsed policy: mode, lifetime in seconds and the allowed MX patterns."""

    mode: StsMode
    max_age: int
    mx: tuple[str, ...]

    def allows(self, mx_host: str) -> bool:
        """Return whether ``mx_host`` matches one of the policy's MX patterns."""
        return any(mx_pattern_matches(pattern, mx_host) for pattern in self.mx)


def mx_pattern_matches(pattern: str, mx_host: str) -> bool:
    """Match an MX host name against one policy pattern (RFC 8461 section 4.1).

    Comparison ignores case and a trailing dot. ``*.example.com`` covers
    exactly one left-most label: ``mx1.example.com`` but neither
    ``example.com`` nor ``a.b.example.com``.
    """
    host = mx_host.rstrip(".").lower()
    pattern = pattern.rstrip(".").lower()
    if not pattern.startswith("*."):
        return host == pattern
    label, dot, rest = host.partition(".")
    return bool(label and dot) and rest == pattern[2:]


def parse_txt_id(records: list[str]) -> str | None:
    """Return the policy id of the one ``v=STSv1`` TXT record, or None.

    None when there is no such record, more than one, or it is malformed.
    """
    candidates = [text for text in records if text.startswith("v=STSv1")]
    if len(candidates) != 1:
        return None
    fields: dict[str, str] = {}
    for part in candidates[0].split(";"):
        key, equals, value = part.strip().partition("=")
        if equals:
            fields.setdefault(key, value)
    policy_id = fields.get("id", "")
    return policy_id if fields.get("v") == "STSv1" and _TXT_ID.match(policy_id) else None


def parse_policy(body: bytes) -> StsPolicy:
    """Parse a policy file; raise `PolicyError` naming the first problem."""
    if len(body) > MAX_POLICY_BYTES:
        raise PolicyError(f"policy is {len(body)} bytes, larger than {MAX_POLICY_BYTES}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError("policy is not UTF-8 text") from None

    single: dict[str, str] = {}
    mx: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        match = _KEY_VALUE.match(line)
        if match is None:
            raise PolicyError(f"line {number} is not 'key: value'")
        key, value = match.groups()
        if key == "mx":
            mx.append(value)
        elif key in single and key in ("version", "mode", "max_age"):
            raise PolicyError(f"line {number} repeats {key!r}, which may appear once")
        else:
            single[key] = value
    return _build_policy(single, mx)


def _build_policy(fields: dict[str, str], mx: list[str]) -> StsPolicy:
    if fields.get("version") != "STSv1":
        raise PolicyError(f"version is {fields.get('version')!r}, expected 'STSv1'")
    modes = [mode.value for mode in StsMode]
    if fields.get("mode") not in modes:
        raise PolicyError(f"mode is {fields.get('mode')!r}, expected one of {modes}")
    max_age = fields.get("max_age", "")
    if not _MAX_AGE.match(max_age):
        raise PolicyError(f"max_age is {max_age!r}, expected 1 to 10 digits")
    mode = StsMode(fields["mode"])
    if mode is not StsMode.NONE and not mx:
        raise PolicyError(f"mode {mode.value} needs at least one mx line")
    for pattern in mx:
        if not _MX_PATTERN.match(pattern.rstrip(".").lower()):
            raise PolicyError(f"mx pattern {pattern!r} is not a host name or '*.' "
                              "followed by one")
    return StsPolicy(mode, min(int(max_age), MAX_AGE_CAP_SECONDS), tuple(mx))


@dataclass(frozen=True)
class CachedPolicy:
    """A policy with the TXT id it was fetched for and when it expires."""

    domain: str
    policy_id: str
    policy: StsPolicy
    fetched_at: datetime
    expires_at: datetime


class PolicyCache(Protocol):
    """Storage of fetched policies between lookups (memory or the ledger)."""

    def get(self, domain: str) -> CachedPolicy | None: ...

    def put(self, cached: CachedPolicy) -> None: ...

    def drop(self, domain: str) -> None: ...


class MemoryPolicyCache:
    """A `PolicyCache` in a dict, for one process."""

    def __init__(self) -> None:
        self._policies: dict[str, CachedPolicy] = {}

    def get(self, domain: str) -> CachedPolicy | None:
        return self._policies.get(domain)

    def put(self, cached: CachedPolicy) -> None:
        self._policies[cached.domain] = cached

    def drop(self, domain: str) -> None:
        self._policies.pop(domain, None)


class MtaStsFetcher:
    """Find the MTA-STS policy in force for a recipient domain.

    ``https_port`` exists for tests only, so a local HTTPS server can serve
    policies; RFC 8461 fixes port 443 and production code never sets it.
    """

    def __init__(
        self,
        resolver: MxResolver,
        cache: PolicyCache,
        *,
        context: ssl.SSLContext | None = None,
        https_port: int = 443,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._resolver = resolver
        self._cache = cache
        self._context = context or ssl.create_default_context()
        self._https_port = https_port
        self._clock = clock

    async def policy_for(self, domain: str) -> StsPolicy | None:
        """Return the policy to apply to ``domain``, or None when it has none."""
        name = to_ascii_domain(domain)
        now = self._clock()
        cached = self._cache.get(name)
        if cached is not None and cached.expires_at <= now:
            self._cache.drop(name)
            cached = None

        try:
            policy_id = parse_txt_id(await self._resolver.txt(f"_mta-sts.{name}"))
        except MxError:
            policy_id = None
        if policy_id is None or (cached is not None and cached.policy_id == policy_id):
            return cached.policy if cached is not None else None

        try:
            policy = parse_policy(await self._fetch(name))
        except (PolicyError, _FetchFailed) as exc:
            log.warning("an MTA-STS policy is not usable (%s); %s", exc,
                        "keeping the cached one" if cached else "treating as no policy")
            return cached.policy if cached is not None else None

        if policy.mode is StsMode.NONE:
            self._cache.drop(name)
            return policy
        expires = now + timedelta(seconds=policy.max_age)
        self._cache.put(CachedPolicy(name, policy_id, policy, now, expires))
        return policy

    async def _fetch(self, domain: str) -> bytes:
        host = f"mta-sts.{domain}"
        try:
            addresses = await self._resolver.addresses(host)
        except MxError:
            addresses = []
        if not addresses:
            raise _FetchFailed("the policy host has no address")
        address = addresses[0]
        literal = f"[{address}]" if ":" in address else address
        url = f"https://{literal}:{self._https_port}/.well-known/mta-sts.txt"
        # A new client per fetch: a pooled connection verified for one
        # mta-sts host must never serve another host on the same address.
        async with httpx.AsyncClient(
            verify=self._context, follow_redirects=False,
            timeout=FETCH_TIMEOUT_SECONDS, trust_env=False,
        ) as client:
            try:
                return await _read_policy(client, url, host)
            except httpx.HTTPError as exc:
                raise _FetchFailed(f"fetch failed: {type(exc).__name__}") from None


class _FetchFailed(Exception):
    pass


async def _read_policy(client: httpx.AsyncClient, url: str, host: str) -> bytes:
    headers = {"Host": host, "Accept": "text/plain"}
    extensions = {"sni_hostname": host}
    async with client.stream("GET", url, headers=headers,
                             extensions=extensions) as response:
        if response.status_code != 200:
            raise _FetchFailed(f"HTTP status {response.status_code}, expected 200")
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        if media_type.lower() != "text/plain":
            raise _FetchFailed(f"content type {media_type!r}, expected text/plain")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body.extend(chunk)
            if len(body) > MAX_POLICY_BYTES:
                raise _FetchFailed(f"policy larger than {MAX_POLICY_BYTES} bytes")
    return bytes(body)
