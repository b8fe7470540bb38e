"""Measure the TLS sender's throughput against a local STARTTLS sink.

    .venv/bin/python bench/send.py [--messages 4000] [--repeat 3]
                                   [--no-pipelining] [--json]

The sink is aiosmtpd on uvloop in its own process, requiring STARTTLS with
a trustme certificate, advertising PIPELINING (unless --no-pipelining) and
counting messages without storing them. The script measures messages per
second for `TlsSender` (verified TLS, one recipient a message, envelope
and header checks on every message) with one reused connection and with
4, 8 and 16 concurrent connections. After each of those it measures the
sink's ceiling with the lightest client it can: raw asyncio streams
speaking SMTP over TLS with the sender's TLS context, MAIL/RCPT/DATA
pipelined, no checks. Both clients send the same prebuilt messages from
the default asyncio event loop, and the script also reports each
client's CPU time per message. Client and sink share the machine's cores,
and each cell keeps the fastest of --repeat runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import ssl
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

SENDER = "clinic@example.org"
RECIPIENT = "patient@example.test"
CONNECTION_COUNTS = (1, 4, 8, 16)


def _message(number: int) -> bytes:
    body = ("Your annual check-up is due. Call us to book a visit.\r\n" * 30)
    return (f"From: Clinic <{SENDER}>\r\nTo: {RECIPIENT}\r\n"
            f"Subject: Reminder {number}\r\nMessage-ID: <{number}@example.org>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n{body}").encode()


# --- the sink, in its own process ---

class _CountingHandler:
    def __init__(self, pipelining: bool) -> None:
        self.count = 0
        self._pipelining = pipelining

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any,
                          hostname: str, responses: list[str]) -> list[str]:
        # aiosmtpd 1.4 reads commands line by line, so it serves pipelined
        # commands but does not advertise PIPELINING itself. With this
        # five-argument hook aiosmtpd leaves setting host_name to the hook.
        session.host_name = hostname
        if not self._pipelining:
            return responses
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 2.0.0 OK"


def _run_sink(cert_pem: bytes, key_pem: bytes, pipelining: bool, ready: Any) -> None:
    import uvloop
    from aiosmtpd.smtp import SMTP

    logging.getLogger("mail.log").setLevel(logging.ERROR)
    folder = Path(tempfile.mkdtemp())
    (folder / "cert.pem").write_bytes(cert_pem)
    (folder / "key.pem").write_bytes(key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    handler = _CountingHandler(pipelining)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(handler, tls_context=context, require_starttls=True,
                         hostname="localhost"),
            "127.0.0.1", 0)
        ready.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    uvloop.run(serve())


# --- the clients ---

@dataclass(frozen=True)
class _Run:
    """One measurement: messages per second and the client's CPU per message."""

    per_second: float
    client_cpu_microseconds: float


def _run(messages: int, started: float, cpu_started: float) -> _Run:
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return _Run(messages / elapsed, cpu / messages * 1e6)


async def _bench_sender(port: int, ca_file: Path, connections: int,
                        messages: int) -> _Run:
    from carepost.connectors.smtp import TlsSender
    from carepost.core.settings import SmtpSettings

    settings = SmtpSettings(host="localhost", port=port, ca_file=str(ca_file),
                            max_connections=connections, timeout_seconds=30)
    payloads = [_message(n) for n in range(messages)]
    async with TlsSender(settings) as sender:
        started, cpu_started = time.perf_counter(), time.process_time()
        outcomes = await asyncio.gather(*(
            sender.send(envelope_from=SENDER, recipient=RECIPIENT, data=payload,
                        profile_id="bench") for payload in payloads))
        run = _run(messages, started, cpu_started)
    failed = sum(1 for outcome in outcomes if outcome.state != "sent")
    if failed:
        raise RuntimeError(f"{failed} of {messages} benchmark messages not sent")
    return run


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if line[3:4] != b"-":
            return line


async def _raw_connection(port: int, context: ssl.SSLContext,
                          payloads: list[bytes]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _read_reply(reader)
    writer.write(b"EHLO bench.localhost\r\n")
    await _read_reply(reader)
    writer.write(b"STARTTLS\r\n")
    await _read_reply(reader)
    await writer.start_tls(context, server_hostname="localhost")
    writer.write(b"EHLO bench.localhost\r\n")
    await _read_reply(reader)
    envelope = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode()
    for payload in payloads:
        writer.write(envelope)
        for _ in range(3):
            await _read_reply(reader)
        writer.write(payload + b".\r\n")
        reply = await _read_reply(reader)
        if not reply.startswith(b"250"):
            raise RuntimeError(f"sink rejected a message: {reply!r}")
    writer.write(b"QUIT\r\n")
    await _read_reply(reader)
    writer.close()


async def _bench_raw(port: int, ca_file: Path, connections: int,
                     messages: int) -> _Run:
    from carepost.connectors.smtp_tls import build_client_context

    # The sender's own client context, so both clients negotiate the same
    # TLS version and cipher suite.
    context = build_client_context(ca_file)
    share = messages // connections
    payloads = [_message(n) for n in range(share * connections)]
    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(
        _raw_connection(port, context, payloads[i * share:(i + 1) * share])
        for i in range(connections)))
    return _run(share * connections, started, cpu_started)


def _best(runs: list[_Run]) -> _Run:
    return max(runs, key=lambda run: run.per_second)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4000,
                        help="messages per measurement (default 4000)")
    parser.add_argument("--no-pipelining", action="store_true",
                        help="make the sink not advertise PIPELINING, so the "
                        "sender waits for each reply")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per cell, of which the fastest counts (default 3)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    ca_file = Path(tempfile.mkdtemp()) / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Queue()
    sink = spawn.Process(target=_run_sink, daemon=True, args=(
        leaf.cert_chain_pems[0].bytes(), leaf.private_key_pem.bytes(),
        not args.no_pipelining, ready))
    sink.start()
    port = ready.get(timeout=30)
    try:
        results = _measure(port, ca_file, args.messages, args.repeat)
    finally:
        sink.terminate()
        sink.join()
    results["sink_pipelining"] = not args.no_pipelining
    _report(results, args.json)


def _measure(port: int, ca_file: Path, messages: int, repeat: int) -> dict[str, Any]:
    asyncio.run(_bench_sender(port, ca_file, 4, 200))  # warm up imports and the sink
    asyncio.run(_bench_raw(port, ca_file, 4, 200))
    sender: dict[str, _Run] = {}
    ceiling: dict[str, _Run] = {}
    # Alternate the two clients so that a change in the machine's load
    # during the run affects both alike, and keep the best of each cell.
    for n in CONNECTION_COUNTS:
        sender_runs, raw_runs = [], []
        for _ in range(repeat):
            sender_runs.append(asyncio.run(_bench_sender(port, ca_file, n, messages)))
            raw_runs.append(asyncio.run(_bench_raw(port, ca_file, n, messages)))
        sender[str(n)], ceiling[str(n)] = _best(sender_runs), _best(raw_runs)
    best_sender = round(max(run.per_second for run in sender.values()))
    best_ceiling = round(max(run.per_second for run in ceiling.values()))
    return {
        "messages": messages,
        "repeat": repeat,
        "sender_per_second": {n: round(run.per_second) for n, run in sender.items()},
        "sink_ceiling_per_second": {n: round(run.per_second) for n, run in ceiling.items()},
        "sender_cpu_microseconds": {n: round(run.client_cpu_microseconds)
                                    for n, run in sender.items()},
        "raw_cpu_microseconds": {n: round(run.client_cpu_microseconds)
                                 for n, run in ceiling.items()},
        "best_sender": best_sender,
        "best_ceiling": best_ceiling,
        "ratio": round(best_sender / best_ceiling, 2),
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }


def _report(results: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(results))
        return
    mode = "on" if results["sink_pipelining"] else "off"
    print(f"sink advertises PIPELINING: {mode}")
    print(f"best of {results['repeat']} runs of {results['messages']} messages; "
          f"client CPU in microseconds per message")
    print(f"{'connections':>12} {'TlsSender msg/s':>16} {'raw client msg/s':>17} "
          f"{'TlsSender CPU':>14} {'raw CPU':>8}")
    for n in map(str, CONNECTION_COUNTS):
        print(f"{n:>12} {results['sender_per_second'][n]:>16} "
              f"{results['sink_ceiling_per_second'][n]:>17} "
              f"{results['sender_cpu_microseconds'][n]:>14} "
              f"{results['raw_cpu_microseconds'][n]:>8}")
    print(f"best TlsSender {results['best_sender']} msg/s, sink ceiling "
          f"{results['best_ceiling']} msg/s, ratio {results['ratio']}, "
          f"load average at the end {results['load_average']}")


if __name__ == "__main__":
    main()
