"""The twilio client's HTTP requests, made by a helper process.

Fifty sends in flight keep ~250 garbage-collected objects each alive in the process that makes their
requests (aiohttp's request, connection, transport, parser, timers, traces and their coroutines); a
generation-1 collection over them, and aiohttp's answer handling holding the interpreter lock, pause
the audio loop for milliseconds (``bench/README.md``). :class:`ProcessHttpClient` is the twilio
client's ``http_client``: the client itself (building requests, parsing answers) stays here, and each
request is handed to a helper process (``incall_sms.providers.http_worker``) that makes it with the
library's own ``AsyncTwilioHttpClient``. Here a request in flight is one future.

The protocol: one JSON object per line. A request ``{"id", "method", "url", "params", "data",
"headers", "auth", "timeout", "allow_redirects", "deadline"}``; ``{"id", "cancel": true}`` when its
waiter gave up. An answer ``{"id", "status", "text", "headers": [[name, value], ...]}`` or
``{"id", "error": "not_sent" | "timeout" | "value" | "lost", "type"}``.

Errors, as the in-process client would have raised them, classified by the provider:

* :class:`RequestNotSent`: nothing reached the wire (the connection failed; the helper could not start
  or took no request). Safe to retry.
* :class:`RequestLost`: the request may have been written (a dropped connection, the helper died
  with it in flight). The message may exist.
* ``TimeoutError`` (the helper's deadline) and ``ValueError`` (a bad timeout) pass through.

The helper starts on the first request (or :meth:`HttpProcess.start`, which returns once it is ready),
again after it died, and ends
when :meth:`HttpProcess.aclose` closes its stdin or this process exits (its stdin closes).
All of it runs on one event loop: the provider's HTTP loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from multidict import CIMultiDict
from twilio.http import AsyncHttpClient
from twilio.http.response import Response

from incall_sms.providers.http_worker import MAX_LINE

__all__ = ["START_TIMEOUT_S", "HttpProcess", "ProcessHttpClient", "RequestLost", "RequestNotSent"]

_log = logging.getLogger(__name__)

#: Seconds the helper gets to finish after its stdin closes, before it is killed.
_EXIT_GRACE_S = 5.0
#: Seconds the helper may take to start (import its modules) before it counts as failed.
START_TIMEOUT_S = 30.0


class RequestNotSent(ConnectionError):
    """Nothing of the request reached the wire: it is safe to send it again."""


class RequestLost(ConnectionError):
    """The request may have been written, and its answer will not come."""


class HttpProcess:
    """A helper process making HTTP requests for this one, on the event loop that first uses it.

    Args:
        name: Shown in logs.
        python: The interpreter to start (default: this one, ``sys.executable``).
    """

    def __init__(self, *, name: str = "twilio-http", python: str | None = None) -> None:
        self.name = name
        self._python = python or sys.executable
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._starting = asyncio.Lock()
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The running helper's process id, ``None`` when none runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    async def start(self) -> None:
        """Start the helper now (at start-up, not on a call's first send); a no-op while one runs.

        Raises:
            RequestNotSent: It could not be started, or this object was closed.
        """
        async with self._starting:
            if self._closed:
                raise RequestNotSent(f"the {self.name} helper was closed")
            if self._proc is not None and self._proc.returncode is None:
                return
            env = dict(os.environ)
            # the helper imports the same modules this process did (a checkout on sys.path, a virtualenv)
            env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    self._python, "-m", "incall_sms.providers.http_worker",
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, limit=MAX_LINE,
                )
            except OSError as exc:
                raise RequestNotSent(f"the {self.name} helper did not start ({exc.__class__.__name__})") from None
            await self._until_ready(self._proc)
            self._reader = asyncio.get_running_loop().create_task(self._read(self._proc), name=f"{self.name}-read")

    async def _until_ready(self, proc: asyncio.subprocess.Process) -> None:
        """Wait for the helper's first line (its imports take ~0.3 s): a request written earlier would wait too."""
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                line = await proc.stdout.readline()
            if json.loads(line or b"{}").get("ready") is not True:
                raise ValueError(line[:80])
        except (TimeoutError, ValueError, ConnectionError) as exc:
            self._proc = None
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise RequestNotSent(f"the {self.name} helper did not start ({exc.__class__.__name__})") from None

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        """Hand each answer to its waiter; when the helper ends, every request still waiting is lost."""
        assert proc.stdout is not None
        try:
            while line := await proc.stdout.readline():
                try:
                    answer = json.loads(line)
                    waiter = self._waiting.pop(int(answer["id"]), None)
                except (ValueError, KeyError, TypeError):
                    _log.error("%s helper wrote an unreadable line; ignored", self.name)
                    continue
                if waiter is not None and not waiter.done():
                    waiter.set_result(answer)
        except (ValueError, ConnectionError) as exc:  # a line past MAX_LINE, a broken pipe
            _log.error("%s helper's answers broke off (%s)", self.name, exc.__class__.__name__)
        finally:
            if self._proc is proc:
                self._proc = None
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            waiting, self._waiting = self._waiting, {}
            for waiter in waiting.values():
                if not waiter.done():
                    waiter.set_exception(RequestLost(f"the {self.name} helper ended with the request in flight"))
            if waiting:
                _log.warning("%s helper ended with %d request(s) in flight", self.name, len(waiting))

    async def request(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Send one request to the helper and wait for its answer.

        Args:
            fields: The request's fields (see the module docstring), without ``id``.

        Returns:
            The answer's fields.

        Raises:
            RequestNotSent: The helper could not take the request.
            RequestLost: The helper ended while the request was in flight.
        """
        await self.start()
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        self._next_id += 1
        request_id = self._next_id
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = waiter
        try:
            proc.stdin.write(json.dumps({**fields, "id": request_id}, separators=(",", ":")).encode() + b"\n")
            await proc.stdin.drain()
        except (ConnectionError, RuntimeError) as exc:  # the helper is gone: the line never reached it
            self._waiting.pop(request_id, None)
            raise RequestNotSent(f"the {self.name} helper took no request ({exc.__class__.__name__})") from None
        try:
            return await waiter
        except asyncio.CancelledError:
            if self._waiting.pop(request_id, None) is not None and proc.returncode is None:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    proc.stdin.write(json.dumps({"id": request_id, "cancel": True}).encode() + b"\n")
            raise

    async def aclose(self) -> None:
        """Close the helper's stdin and wait for it to end (killed after a grace period). Idempotent."""
        async with self._starting:
            self._closed = True
            proc, reader = self._proc, self._reader
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
            with contextlib.suppress(ConnectionError):
                await proc.stdin.wait_closed()
        try:
            async with asyncio.timeout(_EXIT_GRACE_S):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        if reader is not None:
            await reader


class ProcessHttpClient(AsyncHttpClient):
    """The twilio client's ``http_client``, making its requests through a :class:`HttpProcess`.

    Args:
        process: The helper.
        deadline: Seconds the helper lets one request run at most (the waiter's own deadline should
            come first; this one only ends requests nobody waits for any more).
        on_answer: Called with each answer's status and headers (this process's context: the
            caller's context variables are visible there). Must not raise.
    """

    def __init__(
        self,
        *,
        process: HttpProcess,
        deadline: float,
        on_answer: Callable[[int, Mapping[str, str]], None] | None = None,
    ) -> None:
        super().__init__(logging.getLogger("twilio.http_client"), True, None)
        self.process = process
        self._deadline = deadline
        self._on_answer = on_answer

    async def request(
        self,
        method: str,
        uri: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the twilio client's signature; the helper passes it to aiohttp
        allow_redirects: bool = False,
    ) -> Response:
        """Make the request in the helper (the signature of ``AsyncTwilioHttpClient.request``).

        Raises:
            RequestNotSent: Nothing reached the wire.
            RequestLost: The request may have been written; no answer will come.
            TimeoutError: The helper's deadline ran out.
            ValueError: A non-positive ``timeout``.
        """
        self.log_request({"method": method.upper(), "url": uri, "params": params, "headers": headers})
        answer = await self.process.request({
            "method": method, "url": uri, "params": params, "data": data, "headers": headers,
            "auth": list(auth) if auth else None, "timeout": timeout, "allow_redirects": allow_redirects,
            "deadline": self._deadline,
        })
        error = answer.get("error")
        if error == "not_sent":
            raise RequestNotSent(f"connection failed ({answer.get('type')})")
        if error == "timeout":
            raise TimeoutError
        if error == "value":
            raise ValueError(timeout)
        if error is not None or not isinstance(answer.get("status"), int):
            raise RequestLost(f"no answer ({answer.get('type') or 'unreadable'})")
        answer_headers: CIMultiDict[str] = CIMultiDict(
            (str(k), str(v)) for k, v in answer.get("headers") or () if isinstance(k, str))
        if self._on_answer is not None:
            self._on_answer(answer["status"], answer_headers)
        response = Response(answer["status"], str(answer.get("text") or ""), answer_headers)
        self.log_response(response.status_code, response)  # the library's own logs, here (masked: http_log)
        return response

    async def close(self) -> None:
        """End the helper."""
        await self.process.aclose()
