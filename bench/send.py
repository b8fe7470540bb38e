"""Measure the TLS sender's throughput against a local STARTTLS sink.

    .venv/bin/python bench/send.py [--messages 4000] [--json]

The sink is aiosmtpd on uvloop in its own process, requiring STARTTLS with
a trustme certificate and counting messages without storing them. The
script measures messages per second for `TlsSender` (verified TLS, one
recipient a message, RSET before each reuse) with one reused connection
and with 4, 8 and 16 concurrent connections. It then measures the sink's
ceiling in the same run with the lightest client it can: raw asyncio
streams speaking SMTP over TLS, MAIL/RCPT/DATA pipelined, no RSET, no
checks. Client and sink share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import ssl
import tempfile
import time
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
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 2.0.0 OK"


def _run_sink(cert_pem: bytes, key_pem: bytes, ready: Any) -> None:
    import uvloop
    from aiosmtpd.smtp import SMTP

    logging.getLogger("mail.log").setLevel(logging.ERROR)
    folder = Path(tempfile.mkdtemp())
    (folder / "cert.pem").write_bytes(cert_pem)
    (folder / "key.pem").write_bytes(key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    handler = _CountingHandler()

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

async def _bench_sender(port: int, ca_file: Path, connections: int,
                        messages: int) -> float:
    from carepost.connectors.smtp import TlsSender
    from carepost.core.settings import SmtpSettings

    settings = SmtpSettings(host="localhost", port=port, ca_file=str(ca_file),
                            max_connections=connections, timeout_seconds=30)
    payloads = [_message(n) for n in range(messages)]
    async with TlsSender(settings) as sender:
        started = time.perf_counter()
        outcomes = await asyncio.gather(*(
            sender.send(envelope_from=SENDER, recipient=RECIPIENT, data=payload,
                        profile_id="bench") for payload in payloads))
        elapsed = time.perf_counter() - started
    failed = sum(1 for outcome in outcomes if outcome.state != "sent")
    if failed:
        raise RuntimeError(f"{failed} of {messages} benchmark messages not sent")
    return messages / elapsed


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if line[3:4] != b"-":
            return line


async def _raw_connection(port: int, context: ssl.SSLContext,
                          count: int) -> None:
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
    for number in range(count):
        writer.write(envelope)
        for _ in range(3):
            await _read_reply(reader)
        writer.write(_message(number) + b".\r\n")
        reply = await _read_reply(reader)
        if not reply.startswith(b"250"):
            raise RuntimeError(f"sink rejected a message: {reply!r}")
    writer.write(b"QUIT\r\n")
    await _read_reply(reader)
    writer.close()


async def _bench_raw(port: int, ca_file: Path, connections: int,
                     messages: int) -> float:
    context = ssl.create_default_context(cafile=str(ca_file))
    share = messages // connections
    started = time.perf_counter()
    await asyncio.gather(*(_raw_connection(port, context, share)
                           for _ in range(connections)))
    return share * connections / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4000,
                        help="messages per measurement (default 4000)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    ca_file = Path(tempfile.mkdtemp()) / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Queue()
    sink = spawn.Process(target=_run_sink, daemon=True, args=(
        leaf.cert_chain_pems[0].bytes(), leaf.private_key_pem.bytes(), ready))
    sink.start()
    port = ready.get(timeout=30)
    try:
        results = _measure(port, ca_file, args.messages)
    finally:
        sink.terminate()
        sink.join()
    _report(results, args.json)


def _measure(port: int, ca_file: Path, messages: int) -> dict[str, Any]:
    asyncio.run(_bench_sender(port, ca_file, 4, 200))  # warm up imports and the sink
    sender = {str(n): round(asyncio.run(_bench_sender(port, ca_file, n, messages)))
              for n in CONNECTION_COUNTS}
    ceiling = {str(n): round(asyncio.run(_bench_raw(port, ca_file, n, messages)))
               for n in CONNECTION_COUNTS}
    best_sender = max(sender.values())
    best_ceiling = max(ceiling.values())
    return {"messages": messages, "sender_per_second": sender,
            "sink_ceiling_per_second": ceiling, "best_sender": best_sender,
            "best_ceiling": best_ceiling,
            "ratio": round(best_sender / best_ceiling, 2)}


def _report(results: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(results))
        return
    print(f"{'connections':>12} {'TlsSender msg/s':>16} {'raw client msg/s':>17}")
    for n in CONNECTION_COUNTS:
        print(f"{n:>12} {results['sender_per_second'][str(n)]:>16} "
              f"{results['sink_ceiling_per_second'][str(n)]:>17}")
    print(f"best TlsSender {results['best_sender']} msg/s, sink ceiling "
          f"{results['best_ceiling']} msg/s, ratio {results['ratio']}")


if __name__ == "__main__":
    main()
