"""The webhook app: inbound SMS/MMS and message status callbacks (one app, one port).

* Every request's ``X-Twilio-Signature`` is checked with Twilio's own
  ``RequestValidator`` against the configured **public** URL (so it works behind a
  proxy); forged or unsigned requests get 403 and nothing personal is logged.
* The form is parsed from the raw body with blank fields kept (Twilio signs them),
  size-capped, strictly UTF-8.
* The reply (empty TwiML) goes out at once; routing, media fetching and context
  injection run afterwards as tasks owned by :class:`WebhookService`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.requests import ClientDisconnect
from twilio.request_validator import RequestValidator

from incall_sms.dispatcher import Dispatcher
from incall_sms.events import SmsEvent
from incall_sms.inbound import InboundError, InboundRouter, parse_inbound_form

__all__ = ["WebhookService", "WebhookSettings", "add_webhook_routes", "create_app"]

#: Seconds a webhook's body may take to arrive (Twilio sends a few KB at once).
BODY_TIMEOUT = 10.0

_log = logging.getLogger(__name__)

#: A delivery event raised here for another worker's message is routed again this many times, this far apart,
#: while no worker has claimed its SID yet (see :meth:`WebhookService.apply_status`).
_ROUTE_TRIES = 20
_ROUTE_RETRY_S = 0.1


async def _until_claimed(route: Callable[[], Awaitable[bool]]) -> bool:
    """Call ``route`` until it reaches a worker, :data:`_ROUTE_TRIES` times :data:`_ROUTE_RETRY_S` apart."""
    for attempt in range(_ROUTE_TRIES):
        if attempt:
            await asyncio.sleep(_ROUTE_RETRY_S)
        if await route():
            return True
    return False

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
_STATUSES = {"accepted", "scheduled", "queued", "sending", "sent", "delivered", "undelivered", "failed", "read",
             "receiving", "received", "canceled"}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WebhookSettings:
    """Webhook settings.

    Attributes:
        public_url: The base URL Twilio calls (``https://agent.example.com``), used for
            signature validation exactly as Twilio saw it.
        auth_token: Twilio auth token (signing key).
        max_body_bytes: Largest accepted request body.
    """

    public_url: str
    auth_token: str
    max_body_bytes: int = 64 * 1024


class WebhookService:
    """Owns the webhook work: signature checks, routing tasks, status callbacks.

    Args:
        settings: Webhook settings.
        router: Inbound message router.
        dispatcher: The dispatcher whose outbox receives status callbacks (``None``: ignored).
        status_router: For callbacks about messages this worker's outbox does not have (each
            worker with its own SQLite outbox): forwards them to the worker that sent the
            message; returns whether one took it.
        event_router: With an outbox shared by the fleet (PostgreSQL), a callback is applied
            here whichever worker sent the message; the event it raises is handed to this, to
            reach the worker that owns the call.
    """

    def __init__(
        self,
        *,
        settings: WebhookSettings,
        router: InboundRouter,
        dispatcher: Dispatcher | None = None,
        status_router: Callable[[str, str, int | None], Awaitable[bool]] | None = None,
        event_router: Callable[[SmsEvent], Awaitable[bool]] | None = None,
    ):
        self.settings = settings
        self.router = router
        self.dispatcher = dispatcher
        self.status_router = status_router
        self.event_router = event_router
        self._validator = RequestValidator(settings.auth_token)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.refused = 0

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run ``coroutine`` after the reply; failures are logged, never lost silently."""
        task = asyncio.get_running_loop().create_task(self._guard(coroutine))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guard(coroutine: Coroutine[Any, Any, Any]) -> None:
        try:
            await coroutine
        except Exception:
            _log.exception("webhook background work failed")

    async def drain(self, grace: float = 10.0) -> None:
        """Wait (bounded) for background work, then cancel what is left."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)

    async def apply_status(self, sid: str, status: str, error_code: int | None) -> None:
        """Apply a status callback here (and route its event to the call's worker), or route it to the sender.

        A callback for a SID that no row has and no worker claims yet (it came before the create's answer)
        is held in the outbox for the send that records the SID (:meth:`Dispatcher.handle_status`).
        """
        assert self.dispatcher is not None
        if await self.dispatcher.outbox.by_sid(sid) is None and self.status_router is not None \
                and await self.status_router(sid, status, error_code):
            return
        event = await self.dispatcher.handle_status(sid, status, error_code)
        if event is None:
            # held: with each worker's own outbox the sender may have recorded, claimed and looked for held
            # statuses just before it was held here: ask for the sender again for a moment (it applies it; a
            # second application changes nothing)
            if self.status_router is not None and await self.dispatcher.outbox.by_sid(sid) is None:
                await _until_claimed(lambda: self.status_router(sid, status, error_code))  # type: ignore[misc]
        # applied here just after the sender wrote the SID and before it claimed the SID in Redis: give the claim
        # a moment to appear
        elif self.event_router is not None and not await _until_claimed(
                lambda: self.event_router(event)):  # type: ignore[misc]
            _log.warning("delivery event for message %s reached no worker (its worker is gone)", sid)

    def url_for(self, request: Request) -> str:
        """The URL Twilio signed: public base + path + query."""
        url = self.settings.public_url.rstrip("/") + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        return url

    async def signed_form(self, request: Request) -> dict[str, str] | Response:
        """The validated form of a signed request, or the error response to send."""
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.settings.max_body_bytes):
            return PlainTextResponse("request body too large", status_code=413)
        body = b""
        try:  # a body trickled in a byte at a time holds a connection: it gets BODY_TIMEOUT seconds
            async with asyncio.timeout(BODY_TIMEOUT):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > self.settings.max_body_bytes:
                        return PlainTextResponse("request body too large", status_code=413)
        except TimeoutError:
            return PlainTextResponse("request body too slow", status_code=408)
        except ClientDisconnect:  # the client left: nothing to answer, nothing to log
            return Response(status_code=400)
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
        except (UnicodeDecodeError, ValueError):
            pairs = None
        signature = request.headers.get("X-Twilio-Signature", "")
        form = dict(pairs) if pairs is not None else {}
        if pairs is None or len(form) != len(pairs) or not signature or not self._validator.validate(
            self.url_for(request), form, signature
        ):
            self.refused += 1
            _log.warning("webhook %s refused: missing or invalid signature", request.url.path)
            return PlainTextResponse("forbidden", status_code=403)
        return form


def create_app(
    service: WebhookService,
    *,
    startup: Callable[[], Awaitable[None]] | None = None,
    shutdown: Callable[[], Awaitable[None]] | None = None,
    figures: Callable[[], dict[str, Any]] | None = None,
) -> FastAPI:
    """Build a FastAPI app serving the webhooks of ``service`` (see :func:`add_webhook_routes`).

    Args:
        service: The webhook service.
        startup: Awaited before the app serves (e.g. provider warm-up, outbox recovery).
        shutdown: Awaited after background work drained.
        figures: Extra figures for ``/health`` and ``/ready`` (counts only).
    """
    state = {"ready": False}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if startup is not None:
            await startup()
        state["ready"] = True
        yield
        state["ready"] = False
        await service.drain()
        if shutdown is not None:
            await shutdown()

    app = FastAPI(title="incall-sms webhooks", lifespan=lifespan, docs_url=None, redoc_url=None)
    add_webhook_routes(app, service, ready=lambda: state["ready"], figures=figures)
    return app


def add_webhook_routes(
    app: FastAPI,
    service: WebhookService,
    *,
    ready: Callable[[], bool],
    figures: Callable[[], dict[str, Any]] | None = None,
) -> None:
    """Add the routes to an app (yours, or :func:`create_app`'s).

    * ``POST /sms/inbound``: signed inbound SMS/MMS; empty TwiML at once, routing after.
    * ``POST /sms/status``: signed status callbacks.
    * ``GET /health``: liveness (the process answers); ``GET /ready``: 503 until ``ready()``
      (provider warmed, outbox recovered) and again while shutting down. Neither needs a
      signature nor returns personal data.

    Args:
        app: The FastAPI app.
        service: The webhook service.
        ready: Whether the service has started (and not begun to stop).
        figures: Extra figures for ``/health`` and ``/ready`` (counts only).
    """

    def current() -> dict[str, Any]:
        return {"ready": ready(), "refused_webhooks": service.refused, **(figures() if figures else {})}

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok", **current()})

    @app.get("/ready")
    async def readiness() -> JSONResponse:
        now = current()
        return JSONResponse(now, status_code=200 if now["ready"] else 503)

    @app.post("/sms/inbound")
    async def inbound(request: Request) -> Response:
        form = await service.signed_form(request)
        if isinstance(form, Response):
            return form
        try:
            message = parse_inbound_form(form)
        except InboundError as exc:
            _log.warning("inbound webhook rejected: %s", exc)
            return PlainTextResponse(f"invalid webhook: {exc}", status_code=400)
        token = request.headers.get("I-Twilio-Idempotency-Token")
        service.spawn(service.router.route(message, idempotency_token=token))
        return Response(EMPTY_TWIML, media_type="text/xml")

    @app.post("/sms/status")
    async def status(request: Request) -> Response:
        form = await service.signed_form(request)
        if isinstance(form, Response):
            return form
        sid = form.get("MessageSid", "")
        message_status = form.get("MessageStatus", form.get("SmsStatus", "")).lower()
        code = form.get("ErrorCode", "")
        if not sid or message_status not in _STATUSES:
            return PlainTextResponse("invalid status callback (MessageSid, MessageStatus)", status_code=400)
        if code and not (code.isascii() and code.isdigit()):
            return PlainTextResponse("invalid status callback (ErrorCode)", status_code=400)
        if service.dispatcher is not None:
            service.spawn(service.apply_status(sid, message_status, int(code) if code else None))
        return Response(status_code=204)
