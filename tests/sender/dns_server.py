"""A tiny authoritative DNS server on 127.0.0.1 (UDP) for the MX tests.

It replies from a dict of records built with dnspython's own message
tooling, so the sender's real dnspython resolver does real lookups: a
known name with other record types gives an empty answer (NoAnswer), an
unknown name gives NXDOMAIN, and a name listed in ``failing`` gives
SERVFAIL.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType

import dns.asyncresolver
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

HOST = "127.0.0.1"
TTL_SECONDS = 60


def quoted_txt(value: str) -> str:
    """Return TXT rdata text for ``value``, split in strings of 255 bytes at most."""
    chunks = [value[i:i + 200] for i in range(0, len(value), 200)] or [""]
    return " ".join(f'"{chunk}"' for chunk in chunks)


class DnsServer:
    """Reply to queries from ``records``: (name, type) -> rdata texts."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.failing: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((HOST, 0))
        self._socket.settimeout(0.1)
        self.port: int = self._socket.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    # --- building the zone ---

    def add(self, name: str, record_type: str, *values: str) -> None:
        key = (name.rstrip(".").lower(), record_type.upper())
        self.records.setdefault(key, []).extend(values)

    def add_mx(self, domain: str, *hosts: tuple[int, str]) -> None:
        self.add(domain, "MX", *(f"{pref} {host}." if host != "." else f"{pref} ."
                                 for pref, host in hosts))

    def add_txt(self, name: str, *values: str) -> None:
        self.add(name, "TXT", *(quoted_txt(value) for value in values))

    def remove(self, name: str, record_type: str) -> None:
        self.records.pop((name.rstrip(".").lower(), record_type.upper()), None)

    def resolver(self) -> dns.asyncresolver.Resolver:
        """Return a dnspython resolver that queries only this server."""
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [HOST]
        resolver.port = self.port
        resolver.timeout = 1.0
        resolver.lifetime = 2.0
        resolver.cache = None
        return resolver

    # --- lifecycle ---

    def __enter__(self) -> DnsServer:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, traceback: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._socket.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, client = self._socket.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            query = dns.message.from_wire(wire)
            self._socket.sendto(self._answer(query).to_wire(), client)

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        record_type = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, record_type))
        if name in self.failing:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        values = self.records.get((name, record_type))
        if values:
            response.answer.append(dns.rrset.from_text_list(
                question.name, TTL_SECONDS, "IN", record_type, values))
        elif not any(known == name for known, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response
