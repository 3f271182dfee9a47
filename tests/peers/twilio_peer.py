"""A behaviour peer of Twilio's Messages API on loopback, for tests and benchmarks.

It speaks the wire format the real ``twilio`` client expects (form-encoded POST,
HTTP Basic auth, JSON resources and error bodies) and can be scripted to misbehave:
errors by code, 5xx, 429, slow answers, dropped connections, and "created the
message, then failed to answer" (the case that makes retries dangerous).

WhatsApp: ``whatsapp:+E164`` addresses (From and To on the same channel, else 21910), Content
templates (``ContentSid`` + ``ContentVariables``, rendered from ``content_templates`` into the
stored body), and the 24-hour rule for the addresses in ``whatsapp_window_closed``: a free-form
message to one of them is refused with 63016 and nothing is created.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import email.utils
import itertools
import json
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from tests.peers.loopback import serve_app

ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "test-auth-token-0123456789abcdef"


@dataclasses.dataclass
class Fault:
    """What the peer does with one request.

    Attributes:
        status: HTTP status to answer (200/201 = normal).
        code: Twilio error code for error answers.
        delay: Seconds to wait before answering.
        commit: Whether the message is created even though the answer is an error,
            a delay or a dropped connection.
        drop: Close the connection without answering.
        raw: Answer this text (``content_type``) instead of Twilio's JSON, with ``status``: what a proxy
            or a load balancer in front of the API may send back.
        problem: Answer an RFC 9457 problem document (``application/problem+json``) carrying ``code``,
            the error format of Twilio's newer APIs.
        answer: Fields of the message resource answered differently from the message created (a final
            ``status`` already, another message's ``to``...).
        headers: Extra response headers (``Retry-After`` on a 429 ...).
    """

    status: int = 201
    code: int | None = None
    delay: float = 0.0
    commit: bool = True
    drop: bool = False
    raw: str | None = None
    content_type: str = "text/html"
    problem: bool = False
    answer: dict[str, Any] | None = None
    headers: dict[str, str] | None = None


OK = Fault()


@dataclasses.dataclass
class PeerMessage:
    """A message the peer created."""

    sid: str
    to: str
    from_: str | None
    body: str
    form: dict[str, list[str]]
    created: float
    status: str = "queued"
    error_code: int | None = None


class TwilioPeer:
    """Loopback Twilio peer. Use as ``async with TwilioPeer() as peer:``.

    Attributes:
        base_url: ``http://127.0.0.1:PORT`` to give the client.
        requests: Every POST form received (also rejected ones), in order.
        messages: Messages created.
    """

    def __init__(self, *, account_sid: str = ACCOUNT_SID, auth_token: str = AUTH_TOKEN) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.requests: list[dict[str, list[str]]] = []
        self.request_times: list[float] = []
        self.answer_times: list[float] = []  # when each create request was answered (monotonic)
        self.auth_failures = 0
        self.list_requests = 0
        # seconds before a created message shows in lookups (a read replica or a cache in front of GETs)
        self.list_lag = 0.0
        # lookups answer an empty page whose next page is itself (a broken cursor, a cache)
        self.list_loop = False
        # what the API stores of a body it was sent (Link Shortening, Smart Encoding, an appended opt-out line)
        self.rewrite: Callable[[str], str] | None = None
        # seconds the API's clock is behind the host's: its dates and its Date headers (a host without time sync)
        self.clock_behind = 0.0
        self.messages: list[PeerMessage] = []
        self.faults: list[Fault] = []
        self.fault_for: Callable[[dict[str, list[str]]], Fault | None] | None = None
        self.error_numbers: dict[str, int] = {}
        self.calls: dict[str, dict[str, str]] = {}
        self.calls_fetched: list[str] = []  # call SIDs looked up (GET .../Calls/{sid}.json)
        self.list_faults: list[Fault] = []
        # per-request faults for message lookups (GET .../Messages.json), from the query; after list_faults
        self.list_fault_for: Callable[[Mapping[str, str]], Fault | None] | None = None
        self.content_templates: dict[str, str] = {}  # ContentSid -> text with {{1}}-style placeholders
        self.whatsapp_window_closed: set[str] = set()  # whatsapp:+E164 addresses without an open session
        self.received = asyncio.Event()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def __aenter__(self) -> TwilioPeer:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self._create)
        app.router.add_get("/2010-04-01/Accounts/{sid}/Messages.json", self._list)
        app.router.add_get("/2010-04-01/Accounts/{sid}/Calls/{call}.json", self._call)
        app.on_response_prepare.append(self._date_header)
        self._runner, port = await serve_app(app, handler_cancellation=True)
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- helpers ---------------------------------------------------------------

    def _authorized(self, request: web.Request, sid: str) -> bool:
        header = request.headers.get("Authorization", "")
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return header == expected and sid == self.account_sid

    def _resource(self, msg: PeerMessage) -> dict[str, Any]:
        from incall_sms.segments import count_segments

        segments = 1 if msg.to.startswith("whatsapp:") else count_segments(msg.body).segments
        return {
            "sid": msg.sid,
            "account_sid": self.account_sid,
            "to": msg.to,
            "from": msg.from_,
            "messaging_service_sid": (msg.form.get("MessagingServiceSid") or [None])[0],
            "body": msg.body,
            "status": msg.status,
            "num_segments": str(segments),
            "num_media": str(len(msg.form.get("MediaUrl", []))),
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "date_created": email.utils.formatdate(msg.created - self.clock_behind, usegmt=True),
            "date_updated": email.utils.formatdate(msg.created - self.clock_behind, usegmt=True),
            "date_sent": None,
            "price": None,
            "price_unit": "USD",
            "error_code": msg.error_code,
            "error_message": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{msg.sid}.json",
            "subresource_uris": {},
        }

    async def _date_header(self, _request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Date"] = email.utils.formatdate(time.time() - self.clock_behind, usegmt=True)

    @staticmethod
    def _error(status: int, code: int | None, message: str) -> web.Response:
        return web.json_response(
            {
                "code": code,
                "message": message,
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status,
            },
            status=status,
        )

    # -- handlers --------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.StreamResponse:
        post = await request.post()
        form: dict[str, list[str]] = {}
        for key, value in post.items():
            form.setdefault(key, []).append(str(value))
        self.requests.append(form)
        self.request_times.append(time.monotonic())
        self.received.set()
        if not self._authorized(request, request.match_info["sid"]):
            self.auth_failures += 1
            return self._error(401, 20003, "Authenticate")
        to = (form.get("To") or [""])[0]
        if not to:
            return self._error(400, 21604, "A 'To' phone number is required.")
        content_sid = (form.get("ContentSid") or [None])[0]
        if not form.get("Body") and not form.get("MediaUrl") and not content_sid:
            return self._error(400, 21602, "Message body is required.")
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return self._error(400, 21603, "A 'From' phone number is required.")
        from_ = (form.get("From") or [""])[0]
        if from_ and to.startswith("whatsapp:") != from_.startswith("whatsapp:"):
            return self._error(400, 21910, "Invalid From and To pair. From and To should be of the same channel")
        body = (form.get("Body") or [""])[0]
        if content_sid:
            try:
                variables = json.loads((form.get("ContentVariables") or ["{}"])[0])
            except ValueError:
                return self._error(400, 21656, "The ContentVariables Parameter is invalid.")
            body = self.content_templates.get(content_sid, f"[template {content_sid}]")
            for name, value in variables.items():
                body = body.replace("{{" + str(name) + "}}", str(value))
        elif to in self.whatsapp_window_closed:
            return self._error(400, 63016, "Failed to send freeform message because you are outside the allowed "
                                           "window. If you are using WhatsApp, please use a Message Template.")
        fault = self.faults.pop(0) if self.faults else None
        if fault is None and self.fault_for is not None:
            fault = self.fault_for(form)
        fault = fault or OK
        if to in self.error_numbers:
            fault = Fault(status=400, code=self.error_numbers[to], commit=False)
        msg: PeerMessage | None = None
        if fault.commit:
            msg = PeerMessage(
                sid=f"SM{next(self._ids):032x}",
                to=to,
                from_=(form.get("From") or [None])[0],
                body=self.rewrite(body) if self.rewrite is not None else body,
                form=form,
                created=time.time(),
            )
            self.messages.append(msg)
        if fault.delay:
            await asyncio.sleep(fault.delay)
        self.answer_times.append(time.monotonic())
        if fault.drop:
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError  # aiohttp treats this as an aborted handler
        if fault.raw is not None:
            return web.Response(status=fault.status, text=fault.raw, content_type=fault.content_type)
        if fault.problem:
            return web.json_response({"type": f"https://www.twilio.com/docs/errors/{fault.code}",
                                      "title": "scripted problem", "status": fault.status, "code": fault.code},
                                     status=fault.status, content_type="application/problem+json")
        if fault.status >= 400:
            error = self._error(fault.status, fault.code, "scripted failure")
            error.headers.update(fault.headers or {})
            return error
        assert msg is not None
        return web.json_response(self._resource(msg) | (fault.answer or {}), status=fault.status)

    async def _call(self, request: web.Request) -> web.Response:
        if not self._authorized(request, request.match_info["sid"]):
            return self._error(401, 20003, "Authenticate")
        self.calls_fetched.append(request.match_info["call"])
        call = self.calls.get(request.match_info["call"])
        if call is None:
            return self._error(404, 20404, "The requested resource was not found")
        return web.json_response({"sid": request.match_info["call"], "account_sid": self.account_sid,
                                  "status": "in-progress", "direction": "inbound", **call})

    async def _list(self, request: web.Request) -> web.Response:
        self.list_requests += 1
        if not self._authorized(request, request.match_info["sid"]):
            return self._error(401, 20003, "Authenticate")
        fault = self.list_faults.pop(0) if self.list_faults else None
        if fault is None and self.list_fault_for is not None:
            fault = self.list_fault_for(request.query)
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status >= 400:
                return self._error(fault.status, fault.code, "scripted failure")
        if self.list_loop:
            return web.json_response({"messages": [], "next_page_uri": request.path_qs, "page": 0, "page_size": 50,
                                      "start": 0, "end": -1, "uri": request.path_qs,
                                      "first_page_uri": request.path_qs, "previous_page_uri": None})
        to = request.query.get("To")
        from_ = request.query.get("From")
        listed_before = time.time() - self.list_lag
        found = [
            m for m in reversed(self.messages)
            if (to is None or m.to == to) and (from_ is None or m.from_ == from_) and m.created <= listed_before
        ]
        page_size = int(request.query.get("PageSize", "50"))
        page = int(request.query.get("Page", "0"))
        chunk = found[page * page_size:(page + 1) * page_size]
        next_uri = None
        if (page + 1) * page_size < len(found):
            query = {k: v for k, v in request.query.items() if k != "Page"}
            query["Page"] = str(page + 1)
            next_uri = request.path + "?" + urlencode(query)
        return web.json_response(
            {
                "messages": [self._resource(m) for m in chunk],
                "end": page * page_size + len(chunk) - 1,
                "first_page_uri": request.path_qs,
                "next_page_uri": next_uri,
                "page": page,
                "page_size": page_size,
                "previous_page_uri": None,
                "start": page * page_size,
                "uri": request.path_qs,
            }
        )
