"""Local stand-ins for Segment and RudderStack ``/v1/batch``, and a reset proxy.

The fake follows the documented request and response shapes: Basic auth
with the write key as username and an empty password, a JSON body with a
``batch`` list, ``400`` for a request or an event over the size limit or
for invalid JSON, ``429`` with ``Retry-After``, and on success ``200``
(Segment: a JSON body; RudderStack: the text ``OK``). ``faults`` holds
scripted replies, one per request: ``"429"``, ``"500"``, ``"slow"``
(accept the batch, then reply after the client has timed out) or
``"ok"``. ``ResetProxy`` sits in front and resets TCP connections.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
import threading
from collections import defaultdict
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.conftest import free_port

EVENT_LIMIT = 32_000


class FakeBatchApi:
    """Records every accepted message by ``messageId``."""

    def __init__(self, write_key: str, *, batch_limit: int, flavour: str) -> None:
        self.expected_auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
        self.batch_limit = batch_limit
        self.flavour = flavour
        self.faults: list[str] = []
        self.poisoned: set[str] = set()
        self.received: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.calls = 0
        self.requests: list[int] = []
        self.sent_at: list[str] = []
        self.slow_seconds = 1.5
        self.app = Starlette(routes=[Route("/v1/batch", self.batch, methods=["POST"])])

    def _error(self, status: int, text: str) -> Response:
        return PlainTextResponse(text, status_code=status)

    async def batch(self, request: Request) -> Response:
        self.calls += 1
        if request.headers.get("authorization") != self.expected_auth:
            return self._error(401, "Invalid Authorization Header")
        body = await request.body()
        self.requests.append(len(body))
        fault = self.faults.pop(0) if self.faults else "ok"
        if fault == "429":
            return Response("Too Many Requests", status_code=429,
                            headers={"Retry-After": "1"})
        if fault == "500":
            return self._error(500, "Internal Server Error")
        if len(body) > self.batch_limit:
            return self._error(400, "Request too large")
        try:
            payload = json.loads(body)
        except ValueError:
            return self._error(400, "Invalid JSON")
        messages = payload.get("batch", [])
        if any(len(json.dumps(m).encode()) > EVENT_LIMIT for m in messages):
            return self._error(400, "Event too large")
        if any(m.get("messageId") in self.poisoned for m in messages):
            return self._error(400, "Invalid event")
        for message in messages:
            self.received[message["messageId"]].append(message)
        self.sent_at.append(payload.get("sentAt", ""))
        if fault == "slow":
            await asyncio.sleep(self.slow_seconds)
        if self.flavour == "rudderstack":
            return PlainTextResponse("OK")
        return JSONResponse({"success": True})


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class ResetProxy:
    """A TCP proxy on 127.0.0.1; each new connection takes the next action.

    ``"reset_before"`` resets the connection before the request reaches
    the server; ``"reset_after"`` forwards the request, waits until the
    server starts its reply (so the batch was accepted) and then resets,
    which the client sees as a failed push. Anything else passes through.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.actions: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _pipe(self, source: asyncio.StreamReader,
                    target: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                target.write(data)
                await target.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            target.close()

    async def _handle(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        self.tasks.add(asyncio.current_task())
        action = self.actions.pop(0) if self.actions else "pass"
        if action == "reset_before":
            await reader.read(1024)
            _reset(writer)
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1",
                                                             self.upstream_port)
        forward = asyncio.create_task(self._pipe(reader, up_writer))
        if action == "reset_after":
            await up_reader.read(1)
            _reset(writer)
            forward.cancel()
            up_writer.close()
            return
        await asyncio.gather(forward, self._pipe(up_reader, writer))

    def __enter__(self) -> ResetProxy:
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.port), self.loop)
        self.server = future.result(timeout=5)
        return self

    async def _stop(self) -> None:
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.sleep(0)

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()
