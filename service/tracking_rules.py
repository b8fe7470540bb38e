"""Classify an open or a click as ``human`` or ``machine``.

Mail privacy proxies fetch every image when a message arrives, and the
link scanners of mail security gateways follow every link, often within
seconds of delivery. Counting those as engagement inflates open and click
rates and would trigger follow-ups nobody asked for. A hit is ``machine``
when any of these rules matches (the first match is stored as ``rule``):

- ``head_request``: a HEAD request (a link checker, never a person);
- ``user_agent``: the User-Agent is missing or contains one of
  ``MACHINE_USER_AGENTS``;
- ``network``: the client address is in ``MACHINE_NETWORKS``;
- ``open_before_delivery_window``: an open less than
  ``OPEN_MIN_SECONDS`` after the delivery was recorded as sent;
- ``click_after_delivery``: a click less than ``CLICK_MIN_SECONDS``
  after delivery;
- ``link_burst``: a click on a different link of the same message within
  ``BURST_SECONDS`` of another click (a person cannot click two links of
  one message within a second; a scanner that follows all of them can).
  The earlier clicks of the burst are turned into machine clicks too.

Only the verdict and the rule name are stored; the IP address and the
User-Agent are read here and then forgotten. Behind a reverse proxy, run
uvicorn with ``--proxy-headers`` so the client address is the real one.

NOTE: these are heuristics. Apple Mail Privacy Protection fetches through
Apple's own network with a bare ``Mozilla/5.0`` agent, which the rules
catch; a scanner that copies a desktop browser's agent from a network not
listed here, later than the timing windows, is counted as human.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime

from carepost.ledger.engagement import Verdict, as_utc

OPEN_MIN_SECONDS = 2.0
CLICK_MIN_SECONDS = 10.0
BURST_SECONDS = 1.0

# Lower-case substrings of User-Agent values sent by image proxies, link
# scanners and scripts.
MACHINE_USER_AGENTS: tuple[str, ...] = (
    "googleimageproxy",   # Gmail image proxy ("... via ggpht.com GoogleImageProxy")
    "ggpht.com",
    "yahoomailproxy",     # Yahoo Mail image proxy
    "safelinks",          # Microsoft Defender Safe Links
    "bingpreview",        # Microsoft link previews
    "proofpoint",         # Proofpoint URL Defense
    "mimecast",           # Mimecast URL Protect
    "barracuda",          # Barracuda Link Protection
    "headlesschrome",     # scripted browsers used by sandboxes
    "phantomjs",
    "python-", "curl/", "wget/", "go-http-client", "java/", "okhttp",
    "bot", "crawler", "spider", "scanner", "preview",
)

# The bare agent Apple's privacy proxy sends.
BARE_AGENTS = frozenset({"mozilla/5.0"})

# Apple owns 17.0.0.0/8; Mail Privacy Protection fetches from it.
MACHINE_NETWORKS = (ipaddress.ip_network("17.0.0.0/8"),)


@dataclass(frozen=True)
class RequestFacts:
    """What the rules read from a request; never stored."""

    method: str
    user_agent: str | None
    client_host: str | None


def _in_machine_network(host: str | None) -> bool:
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in MACHINE_NETWORKS)


def request_rule(facts: RequestFacts) -> str | None:
    """Return the rule a request matches on its own, or None."""
    if facts.method.upper() == "HEAD":
        return "head_request"
    agent = (facts.user_agent or "").strip().lower()
    if not agent or agent in BARE_AGENTS:
        return "user_agent"
    if any(marker in agent for marker in MACHINE_USER_AGENTS):
        return "user_agent"
    if _in_machine_network(facts.client_host):
        return "network"
    return None


def timing_rule(kind: str, delivered_at: datetime | None, now: datetime) -> str | None:
    """Return the timing rule an open or click matches, or None."""
    if delivered_at is None:
        return None
    elapsed = (as_utc(now) - as_utc(delivered_at)).total_seconds()
    if kind == "open" and elapsed < OPEN_MIN_SECONDS:
        return "open_before_delivery_window"
    if kind == "click" and elapsed < CLICK_MIN_SECONDS:
        return "click_after_delivery"
    return None


def classify(kind: str, facts: RequestFacts, delivered_at: datetime | None,
             now: datetime) -> tuple[Verdict, str | None]:
    """Return the verdict for one open or click and the rule behind it."""
    rule = request_rule(facts) or timing_rule(kind, delivered_at, now)
    return (Verdict.MACHINE, rule) if rule else (Verdict.HUMAN, None)


__all__ = [
    "BURST_SECONDS", "CLICK_MIN_SECONDS", "MACHINE_NETWORKS", "MACHINE_USER_AGENTS",
    "OPEN_MIN_SECONDS", "RequestFacts", "classify", "request_rule", "timing_rule",
]
