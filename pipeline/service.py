"""In-call SMS for an existing pipecat + Twilio bot: one service per process, one ``CallSms`` per call.

What a bot needs, in one place::

    sms = SmsService(SmsSettings.from_env())            # TWILIO_*, PUBLIC_URL, SMS_* variables
    sms.add_routes(app)                                   # /sms/inbound, /sms/status, /health, /ready
    # in the app's lifespan:  async with sms: ...         (warm-up, outbox recovery, registry)

    @app.post("/voice")
    async def voice(request: Request) -> Response:
        return await sms.voice_twiml(request)             # signed; <Stream> with a single-use token

    @app.websocket("/media")
    async def media(websocket: WebSocket) -> None:
        stream = await sms.accept_stream(websocket)       # signed handshake + token, or closed (1008)
        if stream is None:
            return
        async with sms.call(stream) as call:              # routes the caller's texts to this call
            pipeline = Pipeline([transport.input(), stt, call.processor, context.user(), llm,
                                 call.tap, tts, transport.output(), context.assistant(), call.inbound])

The media-stream handshake is authenticated twice: Twilio's ``X-Twilio-Signature`` over the
``wss://`` URL, and a token minted by the signed ``/voice`` request that binds the stream to
its call (see :mod:`incall_sms.call_binding`); the caller's number comes from that signed
request only. Everything else (dispatcher, outbox, opt-outs, inbound routing, Redis sharing)
is the core's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from xml.sax.saxutils import quoteattr

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse, Response
from twilio.request_validator import RequestValidator

from incall_sms.actions import ActionSet, load_actions
from incall_sms.call_binding import CALL_MEMORY, CALL_SID, STREAM_SID, CallBinder, StreamAuthError
from incall_sms.dispatcher import CallContext, Dispatcher
from incall_sms.engine import ActionEngine
from incall_sms.errors import InvalidPhoneNumberError, SmsError
from incall_sms.inbound import InboundRouter, InProcessCallRegistry, InProcessSeenKeys
from incall_sms.judges.base import ConditionJudge, condition_specs
from incall_sms.judges.embedded import EmbeddedJudge
from incall_sms.judges.select import make_judge
from incall_sms.media.fetch import MediaFetcher
from incall_sms.media.transcribe import DeepgramPrerecordedTranscriber
from incall_sms.optout import SqliteOptOutStore
from incall_sms.outbox import default_worker_id, open_outbox
from incall_sms.phone import mask, normalize_e164
from incall_sms.pipeline import DEFAULT_ACTIONS
from incall_sms.pipeline.server import WebhookService, WebhookSettings, add_webhook_routes
from incall_sms.processors.inbound import InboundMessageProcessor
from incall_sms.processors.sms_actions import AgentTranscriptTap, SmsActionProcessor
from incall_sms.processors.sms_tools import SmsToolset
from incall_sms.providers.twilio import TwilioProvider
from incall_sms.ratelimit import TokenBucketLimiter
from incall_sms.variables import PatternExtractor, VariableExtractor
from incall_sms.writer import ContentWriter

__all__ = [
    "CallSms", "SettingsError", "SmsService", "SmsSettings", "TwilioStream", "freeze_startup_heap", "stream_twiml",
]

_log = logging.getLogger(__name__)


class SettingsError(SmsError):
    """Required settings are missing or invalid; the message names each variable."""


def positive_float(raw: str, name: str) -> float:
    """``raw`` as a number > 0.

    Raises:
        SettingsError: Naming ``name``.
    """
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number") from None
    if value <= 0:
        raise SettingsError(f"{name} must be > 0")
    return value


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SmsSettings:
    """Settings of the SMS part of a bot (see the README's table for the environment variables).

    Attributes:
        public_url: The https URL Twilio calls (``https://agent.example.com``): webhook and
            handshake signatures are checked against it, TwiML and status callbacks use it.
        account_sid: Twilio account SID.
        auth_token: Twilio auth token (signing key; never logged).
        actions_path: Action file (default: the bundled demo actions).
        state_dir: Outbox, opt-outs and inbound store.
        twilio_api_base_url: Another Twilio API host (tests point it at a loopback peer).
        pool_numbers: Pre-approved pool sender numbers for ``sender: pool`` actions.
        messaging_service_sid: Or a Twilio Messaging Service for them.
        sender_rate: Segments per second per sender number.
        redis_url: Share opt-outs, dedupe keys, rate limits and call routing between workers.
        stream_token_ttl: Seconds a stream token minted by ``/voice`` stays valid.
        deepgram_api_key: For transcribing voice notes and videos the caller texts (``None``:
            they are noted, not transcribed).
        deepgram_base_url: Another Deepgram host.
        database_url: A fleet's shared outbox on PostgreSQL (``DATABASE_URL``); ``None``: the
            worker's own SQLite file in ``state_dir``.
        outbox_lease: Seconds a worker's lease on a send lasts without renewal; a dead
            worker's sends are taken over this long after it stopped renewing.
        worker_id: This worker's name in the fleet (leases, call routing); default
            ``host-pid-random``.
        judge: Which condition judge the calls share: ``embedded`` (default), ``local`` (the
            ``[local]`` extra), ``auto`` (local when installed, else embedded), ``llm`` (see
            :func:`incall_sms.judges.select.make_judge`).
        local_model: The local judge's model (``SMS_LOCAL_MODEL``; ``None``: the best one installed).
        caller_id_trust: Which caller IDs are taken as the caller's number, from Twilio's STIR/SHAKEN
            verdict (``StirVerstat`` on ``/voice``): ``unless-failed`` (default: all but a failed check) or
            ``attested`` (only full or partial attestation, ``TN-Validation-Passed-A``/``-B``). Any other
            call is anonymous: no texts to its number, its number's texts are stored, not read to it.
    """

    public_url: str
    account_sid: str
    auth_token: str
    actions_path: str = str(DEFAULT_ACTIONS)
    state_dir: str = "var"
    twilio_api_base_url: str | None = None
    pool_numbers: tuple[str, ...] = ()
    messaging_service_sid: str | None = None
    sender_rate: float = 1.0
    redis_url: str | None = None
    stream_token_ttl: float = 120.0
    deepgram_api_key: str | None = None
    deepgram_base_url: str | None = None
    judge: str = "embedded"
    local_model: str | None = None
    database_url: str | None = None
    outbox_lease: float = 30.0
    worker_id: str | None = None
    caller_id_trust: str = "unless-failed"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, public_url: str | None = None) -> SmsSettings:
        """Read the settings from the environment.

        Raises:
            SettingsError: Lists every missing variable at once, or names an invalid one.
        """
        env = os.environ if env is None else env
        public = public_url or env.get("PUBLIC_URL", "")
        required = {"TWILIO_ACCOUNT_SID": env.get("TWILIO_ACCOUNT_SID"),
                    "TWILIO_AUTH_TOKEN": env.get("TWILIO_AUTH_TOKEN"), "PUBLIC_URL (or --public-url)": public}
        missing = [name for name, value in required.items() if not value]
        if missing:
            raise SettingsError("missing environment variable(s): " + ", ".join(missing))
        return cls(
            public_url=_public_url(public),
            account_sid=str(required["TWILIO_ACCOUNT_SID"]),
            auth_token=str(required["TWILIO_AUTH_TOKEN"]),
            actions_path=env.get("SMS_ACTIONS_FILE") or str(DEFAULT_ACTIONS),
            state_dir=env.get("SMS_STATE_DIR", "var"),
            twilio_api_base_url=env.get("TWILIO_API_BASE_URL") or None,
            pool_numbers=tuple(n.strip() for n in env.get("SMS_POOL_NUMBERS", "").split(",") if n.strip()),
            messaging_service_sid=env.get("SMS_MESSAGING_SERVICE_SID") or None,
            sender_rate=positive_float(env.get("SMS_SENDER_RATE", "1.0"), "SMS_SENDER_RATE"),
            redis_url=env.get("REDIS_URL") or None,
            stream_token_ttl=positive_float(env.get("SMS_STREAM_TOKEN_TTL", "120"), "SMS_STREAM_TOKEN_TTL"),
            deepgram_api_key=env.get("DEEPGRAM_API_KEY") or None,
            deepgram_base_url=env.get("DEEPGRAM_BASE_URL") or None,
            judge=_judge_name(env.get("SMS_JUDGE", "embedded")),
            local_model=env.get("SMS_LOCAL_MODEL") or None,
            database_url=env.get("DATABASE_URL") or None,
            outbox_lease=positive_float(env.get("SMS_OUTBOX_LEASE", "30"), "SMS_OUTBOX_LEASE"),
            worker_id=env.get("SMS_WORKER_ID") or None,
            caller_id_trust=_caller_id_trust(env.get("SMS_CALLER_ID_TRUST", "unless-failed")),
        )


#: ``SMS_CALLER_ID_TRUST`` values, and the STIR/SHAKEN verdicts each trusts (``None``: all but a failed check).
CALLER_ID_TRUST: dict[str, frozenset[str] | None] = {
    "unless-failed": None,
    "attested": frozenset({"tn-validation-passed-a", "tn-validation-passed-b"}),
}


def _caller_id_trust(raw: str) -> str:
    if raw not in CALLER_ID_TRUST:
        raise SettingsError(f"SMS_CALLER_ID_TRUST must be one of {', '.join(CALLER_ID_TRUST)} (got {raw!r})")
    return raw


def caller_id_untrusted(verstat: str | None, *, trust: str = "unless-failed") -> bool:
    """Whether a call's caller ID is not to be taken as the caller's number (Twilio's ``StirVerstat``)."""
    verdict = (verstat or "").strip().lower()
    if verdict.startswith("tn-validation-failed"):
        return True
    trusted = CALLER_ID_TRUST[trust]
    return trusted is not None and verdict not in trusted


def _judge_name(raw: str) -> str:
    from incall_sms.judges.select import JUDGES

    if raw not in JUDGES:
        raise SettingsError(f"SMS_JUDGE must be one of {', '.join(JUDGES)} (got {raw!r})")
    return raw


def _public_url(raw: str) -> str:
    if not raw.startswith(("https://", "http://")):
        raise SettingsError("PUBLIC_URL must start with https:// (the URL Twilio calls)")
    return raw.rstrip("/")


def e164_or_empty(raw: str | None) -> str:
    """``raw`` as E.164, or ``""`` (anonymous callers, SIP/client identities, garbage)."""
    if not raw:
        return ""
    try:
        return normalize_e164(raw, default_region=None, field="number", allow_premium=True)
    except InvalidPhoneNumberError:
        return ""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TwilioStream:
    """An authenticated media stream: SIDs checked, numbers from the signed voice webhook.

    Attributes:
        call_sid: The call (``CA`` + 32 hex digits).
        stream_sid: The stream (``MZ`` + 32 hex digits).
        caller: The caller (E.164), or ``None`` when Twilio gave no number, or one that is not trusted
            (``caller_untrusted``).
        agent_number: The called number (E.164), or ``None``.
        caller_untrusted: Twilio's ``StirVerstat`` says the caller ID failed validation (probably spoofed), or
            is not attested enough for ``SmsSettings.caller_id_trust``: no texts to that number, and the texts it
            sends are not read to this call.
    """

    call_sid: str
    stream_sid: str
    caller: str | None
    agent_number: str | None
    caller_untrusted: bool = False


def stream_twiml(*, ws_url: str, params: Mapping[str, str]) -> str:
    """TwiML that connects the call to our media-stream websocket with ``params``."""
    parameters = "".join(f"<Parameter name={quoteattr(k)} value={quoteattr(v)}/>" for k, v in params.items() if v)
    return (f'<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url={quoteattr(ws_url)}>'
            f"{parameters}</Stream></Connect></Response>")



def freeze_startup_heap() -> None:
    """Keep full garbage collections from pausing calls: call once the app has started (warmed up).

    Everything allocated so far (pipecat, the HTTP and Twilio clients, models, the action set)
    moves to the permanent generation (``gc.freeze()``), so a full collection no longer scans it.
    Without it, a burst of allocations mid-call (say 50 sends at once) triggered a 77 ms full
    collection in ``bench/run.py``: the event loop, and every call's audio, stood still that long.
    ``run_agent.py serve`` does this after start-up; a bot of your own can too (it is process-wide).
    """
    import gc

    gc.collect()
    gc.freeze()

class SmsService:
    """The SMS side of a Twilio bot, shared by all its calls (create one per process).

    Args:
        settings: The settings.
        actions: An action set (default: loaded from ``settings.actions_path``).
        judge: Judge factory for new calls (default: one judge shared by all calls, chosen by
            ``settings.judge``; a local model is loaded and warmed by :meth:`start`).
        clock: ``time.time``-like callable for stream-token expiry (tests).

    Attributes:
        dispatcher: Sends SMS, exactly once per key (outbox, opt-outs, caps, rate limit).
        router: Inbound texts: dedupe, STOP/START, to the live call or the store.
        webhooks: Signature checks and background work of the webhook routes.
        stream_refusals: Media streams refused (unsigned, forged, unbound, reused, malformed).
        refusal_reasons: The same, per reason.
        calls: Live calls of this process by call SID.

    Raises:
        SmsError: The action file is invalid (the message names the field).
        OSError: The state directory cannot be created.
    """

    def __init__(
        self,
        settings: SmsSettings,
        *,
        actions: ActionSet | None = None,
        judge: Callable[[], ConditionJudge] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.settings = settings
        state = pathlib.Path(settings.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        self.actions = actions or load_actions(settings.actions_path)
        self.shared_judge: ConditionJudge | None = None
        if judge is None:
            if settings.judge == "embedded":
                judge = EmbeddedJudge
            else:
                try:
                    chosen = {"SMS_LOCAL_MODEL": settings.local_model} if settings.local_model else {}
                    self.shared_judge = make_judge(settings.judge, env={**os.environ, **chosen})
                except ValueError as exc:
                    raise SettingsError(f"SMS_JUDGE={settings.judge}: {exc}") from None
                shared_judge = self.shared_judge

                def judge() -> ConditionJudge:
                    return shared_judge
        self._judge = judge
        self.provider = TwilioProvider(account_sid=settings.account_sid, auth_token=settings.auth_token,
                                       base_url=settings.twilio_api_base_url)
        self.worker_id = settings.worker_id or default_worker_id()
        try:
            self.outbox = open_outbox(settings.database_url, state_dir=state, worker_id=(
                self.worker_id if settings.database_url else None), lease_seconds=settings.outbox_lease)
        except (ValueError, ImportError) as exc:
            raise SettingsError(f"DATABASE_URL: {exc}") from None
        self.redis: Any = None
        seen = None
        limiter: Any = TokenBucketLimiter(rate=settings.sender_rate, burst=3)
        from incall_sms.whatsapp import InProcessWhatsAppSessions

        # WhatsApp's 24-hour sessions: opened by the router's inbound WhatsApp messages, read by the dispatcher
        self.whatsapp_sessions: Any = InProcessWhatsAppSessions()
        held = None  # status callbacks before the create's answer: held in the outbox
        if settings.redis_url:  # opt-outs, webhook dedupe, stream tokens, rate limits, WhatsApp sessions: shared
            from incall_sms.redis_store import (
                RedisHeldStatuses,
                RedisOptOutStore,
                RedisRateLimiter,
                RedisSeenKeys,
                RedisWhatsAppSessions,
                connect,
            )

            self.redis = connect(settings.redis_url)
            self.optouts: Any = RedisOptOutStore(self.redis)
            seen = RedisSeenKeys(self.redis)
            limiter = RedisRateLimiter(self.redis, rate=settings.sender_rate, burst=3)
            self.whatsapp_sessions = RedisWhatsAppSessions(self.redis)
            if not settings.database_url:  # the outbox is this worker's: early status callbacks wait in Redis
                held = RedisHeldStatuses(self.redis)
        else:
            self.optouts = SqliteOptOutStore(state / "optouts.db")
        self.dispatcher = Dispatcher(
            actions=self.actions, provider=self.provider, outbox=self.outbox, optouts=self.optouts,
            pool_numbers=settings.pool_numbers, messaging_service_sid=settings.messaging_service_sid,
            status_callback_url=f"{settings.public_url}/sms/status", validity_period=600, rate_limiter=limiter,
            whatsapp_sessions=self.whatsapp_sessions, held_statuses=held,
        )
        if settings.database_url and not settings.redis_url:
            _log.warning("DATABASE_URL without REDIS_URL: the outbox is shared, but inbound texts and delivery "
                         "events reach only calls on the worker that receives them")
        self.registry: Any = InProcessCallRegistry()
        status_router = event_router = None
        if self.redis is not None:  # inbound texts and status callbacks reach the worker that owns them
            from incall_sms.redis_store import RedisCallRegistry

            self.registry = RedisCallRegistry(self.redis, worker_id=self.worker_id)
        self.router = InboundRouter(registry=self.registry, optouts=self.optouts, store_path=state / "inbound.db",
                                    seen=seen, whatsapp_sessions=self.whatsapp_sessions)
        if self.redis is not None:
            self.registry.orphan = self.router.store_unrouted
            self.registry.deliver = self.router.hand_over
            self.registry.status_handler = self.dispatcher.handle_status
            self.registry.event_handler = self.dispatcher.publish
            status_router = self.registry.route_status
            event_router = self.registry.route_event

            async def claim(event: Any) -> None:
                if event.kind.value == "sent" and event.sid:
                    await self.registry.claim_sid(event.sid)

            self.dispatcher.subscribe(claim)
        # single-use stream tokens; with Redis a token cannot be used twice on any worker
        self.binder = CallBinder(auth_token=settings.auth_token, ttl=settings.stream_token_ttl,
                                 seen=seen or InProcessSeenKeys(ttl=settings.stream_token_ttl * 2),
                                 calls=seen or InProcessSeenKeys(ttl=CALL_MEMORY),  # Redis keeps keys 24 h
                                 clock=clock or time.time)
        self._validator = RequestValidator(settings.auth_token)
        self.webhooks = WebhookService(
            settings=WebhookSettings(public_url=settings.public_url, auth_token=settings.auth_token),
            router=self.router, dispatcher=self.dispatcher, status_router=status_router, event_router=event_router,
        )
        self.fetcher = MediaFetcher(account_sid=settings.account_sid, auth_token=settings.auth_token)
        self.transcriber: DeepgramPrerecordedTranscriber | None = None
        if settings.deepgram_api_key:
            http = (settings.deepgram_base_url or "https://api.deepgram.com").replace("ws://", "http://").replace(
                "wss://", "https://")
            self.transcriber = DeepgramPrerecordedTranscriber(api_key=settings.deepgram_api_key, base_url=http)
        self.stream_refusals = 0
        self.refusal_reasons: collections.Counter[str] = collections.Counter()
        self.calls: dict[str, CallSms] = {}
        self.ready = False
        self._lifetime = contextlib.AsyncExitStack()

    # -- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Warm the provider up, join the shared call registry, recover the outbox (now and periodically)."""
        await self.provider.warm_up()
        connect_outbox = getattr(self.outbox, "open", None)
        if connect_outbox is not None:  # a shared outbox: connect (and create its table) before taking calls
            await connect_outbox()
        if hasattr(self.registry, "start"):
            await self.registry.start()
        await self._lifetime.enter_async_context(self.dispatcher.recovery())
        warm = getattr(self.shared_judge, "warm", None)
        if warm is not None:  # load the local model and cache its prompts before the first call
            try:
                await warm(condition_specs(self.actions.actions))
            except BaseException:
                await self.aclose()  # nothing started above keeps running
                raise
        self.ready = True

    async def aclose(self) -> None:
        """Let webhook work finish (bounded), then release everything."""
        self.ready = False
        await self.webhooks.drain()
        await self._lifetime.aclose()
        await self.dispatcher.aclose()
        await self.provider.aclose()
        await self.fetcher.aclose()
        if self.transcriber is not None:
            await self.transcriber.aclose()
        close_judge = getattr(self.shared_judge, "aclose", None)
        if close_judge is not None:
            await close_judge()
        await self.outbox.aclose()
        if hasattr(self.registry, "aclose"):
            await self.registry.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        else:
            self.optouts.close()
        self.router.close()

    async def __aenter__(self) -> SmsService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Any = None) -> AsyncIterator[None]:
        """``FastAPI(lifespan=sms.lifespan)`` when the app has no lifespan of its own."""
        async with self:
            yield

    # -- routes ---------------------------------------------------------------------------

    def add_routes(self, app: FastAPI) -> None:
        """Add ``/sms/inbound``, ``/sms/status``, ``/health`` and ``/ready`` to ``app``."""
        add_webhook_routes(app, self.webhooks, ready=lambda: self.ready, figures=lambda: {
            "calls": len(self.calls), "stream_refusals": self.stream_refusals})

    @property
    def stream_url(self) -> str:
        """The media-stream URL Twilio connects to (and signs): ``wss://<public host>/media``."""
        return self.settings.public_url.replace("https://", "wss://").replace("http://", "ws://") + "/media"

    async def voice_twiml(self, request: Request, *, stream_url: str | None = None) -> Response:
        """Answer Twilio's signed voice webhook: TwiML streaming the call with a single-use token.

        Args:
            request: The ``POST /voice`` request (403 unless Twilio signed it).
            stream_url: The ``wss://`` URL of your media websocket (default: :attr:`stream_url`).
        """
        form = await self.webhooks.signed_form(request)
        if isinstance(form, Response):
            return form
        # Twilio's STIR/SHAKEN verdict on the caller ID: a failed one is probably someone else's number
        untrusted = caller_id_untrusted(form.get("StirVerstat"), trust=self.settings.caller_id_trust)
        if untrusted:
            _log.warning("caller ID not trusted (STIR/SHAKEN verdict, SMS_CALLER_ID_TRUST=%s): the call is treated "
                         "as anonymous (no texts to or from its number)", self.settings.caller_id_trust)
        try:
            token = await self.binder.mint(call_sid=form.get("CallSid", ""), caller=e164_or_empty(form.get("From")),
                                           agent_number=e164_or_empty(form.get("To")), caller_untrusted=untrusted)
        except StreamAuthError as exc:
            if exc.reason == "call already announced":  # a replayed /voice: no second stream for a live call
                self._refuse(exc.reason)
                return PlainTextResponse("call already announced", status_code=409)
            return PlainTextResponse("invalid CallSid", status_code=400)
        return Response(stream_twiml(ws_url=stream_url or self.stream_url, params={"token": token}),
                        media_type="text/xml")

    def _refuse(self, reason: str) -> None:
        self.stream_refusals += 1
        self.refusal_reasons[reason] += 1
        _log.warning("media stream refused: %s", reason)

    async def accept_stream(self, websocket: WebSocket, *, stream_url: str | None = None) -> TwilioStream | None:
        """Accept a media-stream websocket only if Twilio opened it for a call our ``/voice`` announced.

        Checks the handshake's ``X-Twilio-Signature`` (refused with HTTP 403 before the
        websocket is accepted), then reads ``connected`` and ``start`` and checks them
        (:meth:`authenticate_stream`); a failing stream is closed with 1008. Nothing is built
        for a refused stream, and only a counted, fixed reason is logged.

        Args:
            websocket: The incoming websocket (not accepted yet).
            stream_url: The URL Twilio signed (default: :attr:`stream_url`).

        Returns:
            The authenticated stream, or ``None`` (already closed).
        """
        signature = websocket.headers.get("x-twilio-signature", "")
        if not signature or not self._validator.validate(stream_url or self.stream_url, {}, signature):
            self._refuse("unsigned or forged handshake")
            await websocket.close(code=1008)  # before accept: the client gets HTTP 403
            return None
        await websocket.accept()
        try:
            return await self.authenticate_stream(websocket)
        except StreamAuthError as exc:
            self._refuse(exc.reason)
            with contextlib.suppress(Exception):
                await websocket.close(code=1008)
            return None

    async def authenticate_stream(self, websocket: WebSocket, *, start_wait: float = 10.0) -> TwilioStream:
        """Read the stream's ``connected`` and ``start`` messages and check them against the signed call.

        Args:
            websocket: The accepted websocket (its handshake signature was checked).
            start_wait: Seconds Twilio has to send ``start``.

        Raises:
            StreamAuthError: Malformed messages, SIDs of the wrong shape, another account,
                a missing, forged, expired, reused or foreign token, or numbers in the
                stream parameters that differ from the signed call.
        """
        start: dict[str, Any] | None = None
        try:
            async with asyncio.timeout(start_wait):
                for _ in range(3):  # connected, then start
                    message = json.loads(await websocket.receive_text())
                    if isinstance(message, dict) and message.get("event") == "start":
                        start = message
                        break
                    if not isinstance(message, dict) or message.get("event") != "connected":
                        raise StreamAuthError("unexpected message before start")
        except TimeoutError:
            raise StreamAuthError("no start message") from None
        except (ValueError, KeyError, RuntimeError, WebSocketDisconnect):
            raise StreamAuthError("malformed or closed before start") from None
        if start is None:
            raise StreamAuthError("no start message")
        body = start.get("start")
        if not isinstance(body, dict):
            raise StreamAuthError("malformed start message")
        call_sid, stream_sid = str(body.get("callSid", "")), str(body.get("streamSid", ""))
        if not CALL_SID.match(call_sid):
            raise StreamAuthError("malformed call SID")
        if not STREAM_SID.match(stream_sid) or start.get("streamSid", stream_sid) != stream_sid:
            raise StreamAuthError("malformed stream SID")
        if body.get("accountSid") != self.settings.account_sid:
            raise StreamAuthError("stream of another account")
        params = body.get("customParameters") or {}
        if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
            raise StreamAuthError("malformed stream parameters")
        binding = await self.binder.redeem(params.get("token", ""), call_sid=call_sid)
        for key, signed in (("from_number", binding.caller), ("to_number", binding.agent_number)):
            if key in params and e164_or_empty(params[key]) != signed:
                raise StreamAuthError(f"stream parameter {key} differs from the signed call")
        return TwilioStream(call_sid=call_sid, stream_sid=stream_sid, caller=binding.caller or None,
                            agent_number=binding.agent_number or None, caller_untrusted=binding.caller_untrusted)

    async def caller_number(self, stream: TwilioStream) -> str | None:
        """The caller's number from the signed call, else from the Calls API (by the verified call SID).

        ``None`` for a caller ID that is not trusted (never looked up: the API would give the same number).
        """
        if stream.caller_untrusted:
            return None
        if stream.caller:
            return stream.caller
        try:
            async def fetch(client: Any) -> Any:
                async with asyncio.timeout(5):
                    return await client.calls(stream.call_sid).fetch_async()

            call = await self.provider.run_with_client(fetch)
            raw = getattr(call, "_from", None)  # E.164 (from_formatted is for display)
        except Exception as exc:
            _log.warning("caller number lookup failed (%s)", exc.__class__.__name__)
            return None
        return e164_or_empty(raw) or None

    # -- calls ----------------------------------------------------------------------------

    def call(
        self,
        stream: TwilioStream,
        *,
        judge: ConditionJudge | None = None,
        extractor: VariableExtractor | None = None,
        writer: ContentWriter | None = None,
        **processor_options: Any,
    ) -> CallSms:
        """The SMS parts of one call (use as ``async with sms.call(stream) as call:``).

        Args:
            stream: The authenticated stream.
            judge: This call's judge (default: the service's judge factory).
            extractor: Variable extractor (default: :class:`PatternExtractor`).
            writer: Writer for prompt-mode texts and prompt lines (default: none, templates).
            **processor_options: Passed to :class:`SmsActionProcessor` (``filler_threshold`` ...).
        """
        return CallSms(self, stream, judge=judge or self._judge(), extractor=extractor or PatternExtractor(),
                       writer=writer, processor_options=processor_options)


class CallSms:
    """One call's SMS parts, registered for the caller's inbound texts while the call runs.

    Use as ``async with sms.call(stream) as call:``. The parts are made on first use, so a
    tool-mode bot that never puts :attr:`processor` in its pipeline does not create one.

    Attributes:
        engine: The call's action engine (variables: ``engine.variables.set(...)``).
        inbound: :class:`InboundMessageProcessor`: last in the pipeline.
        caller: The caller's number (E.164), or ``None``.
    """

    def __init__(self, service: SmsService, stream: TwilioStream, *, judge: ConditionJudge,
                 extractor: VariableExtractor, writer: ContentWriter | None,
                 processor_options: dict[str, Any]) -> None:
        self._service = service
        self.stream = stream
        self._judge = judge
        self._extractor = extractor
        self._writer = writer
        self._options = processor_options
        self._unregister: Any = None
        self._processor: SmsActionProcessor | None = None
        self._toolset: SmsToolset | None = None
        self.caller: str | None = None
        self.engine: ActionEngine | None = None
        self.inbound: InboundMessageProcessor | None = None

    async def __aenter__(self) -> CallSms:
        service, stream = self._service, self.stream
        self.caller = await service.caller_number(stream)
        call = CallContext(call_id=stream.call_sid, caller_number=self.caller, agent_number=stream.agent_number)
        self.engine = ActionEngine(dispatcher=service.dispatcher, call=call, judge=self._judge,
                                   extractor=self._extractor, writer=self._writer)
        self.inbound = InboundMessageProcessor(fetcher=service.fetcher, transcriber=service.transcriber,
                                               replies=self.engine)
        if self.caller and stream.agent_number:
            self._unregister = await service.registry.register(self.caller, stream.agent_number,
                                                               self.inbound.deliver)
        service.calls[stream.call_sid] = self
        _log.info("call %s from %s to %s", stream.call_sid, mask(self.caller), mask(stream.agent_number))
        return self

    def _engine(self) -> ActionEngine:
        if self.engine is None:
            raise RuntimeError("use the call inside 'async with sms.call(stream) as call:'")
        return self.engine

    @property
    def processor(self) -> SmsActionProcessor:
        """Watcher mode: the :class:`SmsActionProcessor`, between STT and the user context aggregator."""
        if self._processor is None:
            options = dict(self._options)
            if not self._judge.instant:  # a hang-up (CancelFrame) must leave the judge time for call-end conditions
                options.setdefault("cancel_grace", 10.0)
            self._processor = SmsActionProcessor(engine=self._engine(), **options)
        return self._processor

    @property
    def tap(self) -> AgentTranscriptTap:
        """The processor's tap: right after the LLM (before the TTS)."""
        return self.processor.agent_tap()

    def toolset(self, **options: Any) -> SmsToolset:
        """Tool mode: ``toolset.register(llm)`` and ``LLMContext(tools=toolset.tools())``.

        Args:
            **options: :class:`SmsToolset` options (``speak_filler``, ``tell_delivery_failures``,
                ``on_undelivered``), taken when the call's toolset is first made.

        Raises:
            RuntimeError: Options given once the toolset exists.
        """
        if self._toolset is None:
            self._toolset = SmsToolset(engine=self._engine(), **options)
        elif options:
            raise RuntimeError("this call's toolset already exists (made by an earlier toolset() or send()): "
                               "pass its options on the first call")
        return self._toolset

    async def send(self, action: str, **variables: str) -> dict[str, Any]:
        """Send ``action``'s text now, from code (a pipecat-flows node, your own tool).

        Returns:
            What really happened, as a tool result: ``{"status": "sent" | "already_sent" |
            "undelivered" | "in_progress" | "skipped" | "failed" | "not_now", ...}`` (see
            :meth:`SmsToolset.call`); a send that fails is a result, never an exception.

        Raises:
            ValueError: ``action`` is not in the call's action file (a programming error; the message
                lists the names).
        """
        actions = self._engine().actions
        names = [a.name for a in actions.actions]
        if action not in names:
            raise ValueError(f"no action {action!r} in this call's action file (it has: {', '.join(names)})")
        chosen = actions.get(action)  # your code decides: a call-end action is sent now too
        at = "call_end" if chosen.when == "call_end" else "turn"  # ("auto" is a turn)
        return await self.toolset().call(chosen, dict(variables), at=at)

    async def __aexit__(self, *exc: object) -> None:
        if self.engine is not None:  # nobody is left to answer (tool mode has no processor to close the waits)
            self.engine.close_all_waits()
        if self._processor is not None:
            self._processor.release()  # also done by its cleanup; here for a processor never run
        if self._toolset is not None:
            self._toolset.close()
        try:
            if self._unregister is not None:
                await self._unregister()  # a shared registry (Redis) may fail: the call still ends here
        finally:
            self._service.calls.pop(self.stream.call_sid, None)
            _log.info("call %s ended", self.stream.call_sid)
