"""The HTTP helper process: runs the twilio client's HTTP requests for a parent process.

Started by :class:`incall_sms.providers.http_process.HttpProcess` as
``python -m incall_sms.providers.http_worker``; never started by hand. Its first line on stdout says
it is ready (``{"ready": true}``); then one JSON object per line on stdin asks for a request, and one
JSON object per line on stdout answers it (see ``http_process`` for the fields). The requests go
through the twilio library's own ``AsyncTwilioHttpClient`` (aiohttp, one connection pool), so
aiohttp's objects, its CPU and the garbage collector's work over them stay out of the parent's audio
process.

The process ends when its stdin closes (the parent closed it, or died): requests still running are
cancelled. It ignores SIGINT (a Ctrl-C in the terminal goes to the parent, which closes it in order).
Nothing but answers is written to the protocol's stdout: the library's prints and logs go to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import warnings
from typing import Any, BinaryIO

import aiohttp
from twilio.http.async_http_client import AsyncTwilioHttpClient

__all__ = ["MAX_LINE", "main"]

#: Longest line either side writes (a page of 100 messages is ~100 KB; a body is at most 1,600 characters).
MAX_LINE = 32 * 1024 * 1024


def _error(request_id: int, error: str, exc: BaseException) -> dict[str, Any]:
    return {"id": request_id, "error": error, "type": type(exc).__name__}


async def _perform(http: AsyncTwilioHttpClient, request: dict[str, Any]) -> dict[str, Any] | None:
    """One request; its answer, or an error the parent maps to the exception the in-process client raises."""
    request_id = int(request["id"])
    auth = request.get("auth")
    try:
        async with asyncio.timeout(float(request["deadline"])):
            response = await http.request(
                request["method"], request["url"], params=request.get("params"), data=request.get("data"),
                headers=request.get("headers"), auth=tuple(auth) if auth else None,
                timeout=request.get("timeout"), allow_redirects=bool(request.get("allow_redirects")),
            )
    except asyncio.CancelledError:
        return None  # the parent gave up on it: nobody waits for an answer
    except aiohttp.ClientConnectorError as exc:  # the connection itself failed: nothing was written
        return _error(request_id, "not_sent", exc)
    except TimeoutError as exc:
        return _error(request_id, "timeout", exc)
    except ValueError as exc:
        return _error(request_id, "value", exc)
    except Exception as exc:  # a dropped connection, a broken answer: it may have been written
        return _error(request_id, "lost", exc)
    headers = [[str(k), str(v)] for k, v in (response.headers or {}).items()]
    return {"id": request_id, "status": response.status_code, "text": response.text, "headers": headers}


async def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Answer requests from ``stdin`` on ``stdout`` until ``stdin`` ends."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, stdout)
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    http = AsyncTwilioHttpClient()
    running: dict[int, asyncio.Task[None]] = {}
    writer.write(b'{"ready":true}\n')  # imported and listening: the parent's start() returns now
    await writer.drain()

    async def answer(request: dict[str, Any]) -> None:
        try:
            out = await _perform(http, request)
            if out is not None:
                writer.write(json.dumps(out, separators=(",", ":")).encode() + b"\n")
                await writer.drain()
        finally:
            running.pop(int(request["id"]), None)

    try:
        while line := await reader.readline():
            request = json.loads(line)
            if request.get("cancel"):
                task = running.pop(int(request["id"]), None)
                if task is not None:
                    task.cancel()
                continue
            running[int(request["id"])] = loop.create_task(answer(request))
    finally:
        for task in list(running.values()):
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
        await http.close()
        with contextlib.suppress(Exception):
            writer.close()


def main() -> None:
    """Serve the parent: the protocol on the original stdout, everything else printed goes to stderr."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    protocol_out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.getLogger("twilio").setLevel(logging.WARNING)  # it logs request URLs (phone numbers) at INFO
    # twilio's async client still builds aiohttp.BasicAuth, deprecated since aiohttp 3.14: said on every request
    warnings.filterwarnings("ignore", message="(BasicAuth|The 'auth' parameter) is deprecated",
                            category=DeprecationWarning)
    with os.fdopen(0, "rb", buffering=0) as stdin, os.fdopen(protocol_out, "wb", buffering=0) as stdout:
        asyncio.run(serve(stdin, stdout))


if __name__ == "__main__":
    main()
