"""The live phone agent: Twilio voice webhook, Media Streams websocket, one pipecat pipeline per call.

One app, one port: ``POST /voice`` (signed; TwiML ``<Connect><Stream>`` carrying a
single-use token bound to the call, see :mod:`incall_sms.call_binding`), ``WS /media``
(the call; the handshake's ``X-Twilio-Signature`` and the token are checked before any
pipeline is built), ``POST /sms/inbound`` and ``POST /sms/status`` (see
:mod:`incall_sms.pipeline.server`).

Per call: ``TwilioFrameSerializer`` over pipecat's FastAPI websocket transport, Deepgram
STT, the agent LLM (pipecat's ``OpenAILLMService``: OpenAI or any compatible endpoint),
a TTS (Deepgram, or the offline tone TTS), the SMS action processor and its tap, and
inbound-message injection. Settings come from the environment (:class:`LiveSettings`).
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
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from xml.sax.saxutils import quoteattr

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse, Response
from incall_sms.media.fetch import MediaFetcher
from incall_sms.media.transcribe import DeepgramPrerecordedTranscriber
from incall_sms.pipeline import DEFAULT_ACTIONS
from incall_sms.pipeline.server import WebhookService, WebhookSettings, create_app
from twilio.request_validator import RequestValidator

from incall_sms.actions import load_actions
from incall_sms.call_binding import CALL_SID, STREAM_SID, CallBinder, StreamAuthError
from incall_sms.dispatcher import CallContext, Dispatcher
from incall_sms.engine import ActionEngine
from incall_sms.errors import InvalidPhoneNumberError, SmsError
from incall_sms.inbound import InboundRouter, InProcessCallRegistry, InProcessSeenKeys
from incall_sms.judges.embedded import EmbeddedJudge
from incall_sms.optout import SqliteOptOutStore
from incall_sms.outbox import Outbox
from incall_sms.phone import mask, normalize_e164
from incall_sms.providers.twilio import TwilioProvider
from incall_sms.ratelimit import TokenBucketLimiter
from incall_sms.variables import PatternExtractor

__all__ = ["CallRecorder", "LiveAgent", "LiveSettings", "SettingsError", "TwilioStream"]

_log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are a friendly phone agent. Keep answers short and natural for speech. Text messages (SMS) are "
    "sent by a separate system that tells the caller itself when a text was sent or failed: never say you "
    "sent a text, and never promise to text a number the caller dictates."
)


class SettingsError(SmsError):
    """Required settings are missing or invalid; the message names each variable."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LiveSettings:
    """Settings of the live agent (see README for the environment variables)."""

    public_url: str
    account_sid: str
    auth_token: str
    deepgram_api_key: str
    llm_api_key: str
    llm_base_url: str | None = None
    llm_model: str = "gpt-4o-mini"
    tts: str = "deepgram"
    actions_path: str = str(DEFAULT_ACTIONS)
    state_dir: str = "var"
    deepgram_base_url: str | None = None
    twilio_api_base_url: str | None = None
    pool_numbers: tuple[str, ...] = ()
    messaging_service_sid: str | None = None
    system_prompt: str = SYSTEM_PROMPT
    record_dir: str | None = None
    record_unmasked: bool = False
    sender_rate: float = 1.0
    redis_url: str | None = None
    stream_token_ttl: float = 120.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, public_url: str | None = None) -> LiveSettings:
        """Read settings from the environment.

        Raises:
            SettingsError: Lists every missing variable at once.
        """
        env = os.environ if env is None else env
        public = public_url or env.get("PUBLIC_URL", "")
        required = {"TWILIO_ACCOUNT_SID": env.get("TWILIO_ACCOUNT_SID"),
                    "TWILIO_AUTH_TOKEN": env.get("TWILIO_AUTH_TOKEN"),
                    "DEEPGRAM_API_KEY": env.get("DEEPGRAM_API_KEY"),
                    "PUBLIC_URL (or --public-url)": public}
        llm_url = env.get("SMS_AGENT_LLM_URL")
        llm_key = env.get("SMS_AGENT_LLM_KEY") or env.get("OPENAI_API_KEY")
        if not llm_url:
            required["OPENAI_API_KEY (or SMS_AGENT_LLM_URL)"] = llm_key
        missing = [name for name, value in required.items() if not value]
        if missing:
            raise SettingsError("missing environment variable(s): " + ", ".join(missing))
        if not public.startswith(("https://", "http://")):
            raise SettingsError("PUBLIC_URL must start with https:// (the URL Twilio calls)")
        tts = env.get("SMS_AGENT_TTS", "deepgram")
        if tts not in ("deepgram", "tone"):
            raise SettingsError("SMS_AGENT_TTS must be 'deepgram' or 'tone'")
        pool = tuple(n.strip() for n in env.get("SMS_POOL_NUMBERS", "").split(",") if n.strip())
        return cls(
            public_url=public.rstrip("/"),
            account_sid=str(required["TWILIO_ACCOUNT_SID"]),
            auth_token=str(required["TWILIO_AUTH_TOKEN"]),
            deepgram_api_key=str(required["DEEPGRAM_API_KEY"]),
            llm_api_key=llm_key or "none",
            llm_base_url=llm_url,
            llm_model=env.get("SMS_AGENT_LLM_MODEL", "gpt-4o-mini"),
            tts=tts,
            actions_path=env.get("SMS_ACTIONS_FILE") or str(DEFAULT_ACTIONS),
            state_dir=env.get("SMS_STATE_DIR", "var"),
            deepgram_base_url=env.get("DEEPGRAM_BASE_URL") or None,
            twilio_api_base_url=env.get("TWILIO_API_BASE_URL") or None,
            pool_numbers=pool,
            messaging_service_sid=env.get("SMS_MESSAGING_SERVICE_SID") or None,
            record_dir=env.get("SMS_RECORD_DIR") or None,
            record_unmasked=env.get("SMS_RECORD_UNMASKED", "") == "1",
            sender_rate=_positive_float(env.get("SMS_SENDER_RATE", "1.0"), "SMS_SENDER_RATE"),
            redis_url=env.get("REDIS_URL") or None,
            stream_token_ttl=_positive_float(env.get("SMS_STREAM_TOKEN_TTL", "120"), "SMS_STREAM_TOKEN_TTL"),
        )


def _positive_float(raw: str, name: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number") from None
    if value <= 0:
        raise SettingsError(f"{name} must be > 0")
    return value


def _e164_or_empty(raw: str | None) -> str:
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
        caller: The caller (E.164), or ``None`` when Twilio gave no number.
        agent_number: The called number (E.164), or ``None``.
    """

    call_sid: str
    stream_sid: str
    caller: str | None
    agent_number: str | None


def stream_twiml(*, ws_url: str, params: Mapping[str, str]) -> str:
    """TwiML that connects the call to our media-stream websocket with ``params``."""
    parameters = "".join(f"<Parameter name={quoteattr(k)} value={quoteattr(v)}/>" for k, v in params.items() if v)
    return (f'<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url={quoteattr(ws_url)}>'
            f"{parameters}</Stream></Connect></Response>")


class LiveAgent:
    """Everything the live agent shares across calls, plus the per-call pipeline builder.

    Args:
        settings: Live settings.
        clock: ``time.time``-like callable for stream-token expiry (tests).

    Attributes:
        stream_refusals: Media streams refused (unsigned, forged, unbound, reused, malformed).
        refusal_reasons: The same, counted per reason.
    """

    def __init__(self, settings: LiveSettings, *, clock: Callable[[], float] | None = None) -> None:
        self.settings = settings
        state = pathlib.Path(settings.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        self.actions = load_actions(settings.actions_path)
        self.provider = TwilioProvider(account_sid=settings.account_sid, auth_token=settings.auth_token,
                                       base_url=settings.twilio_api_base_url)
        self.outbox = Outbox(state / "outbox.db")
        self.redis: Any = None
        seen = None
        limiter: Any = TokenBucketLimiter(rate=settings.sender_rate, burst=3)
        if settings.redis_url:  # opt-outs, webhook dedupe and sender rate limits shared by all workers
            from incall_sms.redis_store import RedisOptOutStore, RedisRateLimiter, RedisSeenKeys, connect

            self.redis = connect(settings.redis_url)
            self.optouts: Any = RedisOptOutStore(self.redis)
            seen = RedisSeenKeys(self.redis)
            limiter = RedisRateLimiter(self.redis, rate=settings.sender_rate, burst=3)
        else:
            self.optouts = SqliteOptOutStore(state / "optouts.db")
        self.dispatcher = Dispatcher(
            actions=self.actions, provider=self.provider, outbox=self.outbox, optouts=self.optouts,
            pool_numbers=settings.pool_numbers, messaging_service_sid=settings.messaging_service_sid,
            status_callback_url=f"{settings.public_url}/sms/status", validity_period=600,
            rate_limiter=limiter,
        )
        self.registry: Any = InProcessCallRegistry()
        if self.redis is not None:  # inbound texts reach the worker that owns the call
            import os as _os
            import socket

            from incall_sms.redis_store import RedisCallRegistry

            self.registry = RedisCallRegistry(self.redis, worker_id=f"{socket.gethostname()}-{_os.getpid()}")
        self.router = InboundRouter(registry=self.registry, optouts=self.optouts, store_path=state / "inbound.db",
                                    seen=seen)
        # single-use stream tokens, shared by every worker (Redis) so a token cannot be used twice anywhere
        self.binder = CallBinder(auth_token=settings.auth_token, ttl=settings.stream_token_ttl,
                                 seen=seen or InProcessSeenKeys(ttl=settings.stream_token_ttl * 2),
                                 clock=clock or time.time)
        self._validator = RequestValidator(settings.auth_token)
        self.stream_refusals = 0
        self.refusal_reasons: collections.Counter[str] = collections.Counter()
        if self.redis is not None:
            self.registry.orphan = self.router.store_unrouted
            self.registry.deliver = self.router.hand_over
        status_router = None
        if self.redis is not None:  # status callbacks reach the worker that sent the message
            status_router = self.registry.route_status
            self.registry.status_handler = self.dispatcher.handle_status

            async def claim(event: Any) -> None:
                if event.kind.value == "sent" and event.sid:
                    await self.registry.claim_sid(event.sid)

            self.dispatcher.subscribe(claim)
        self.webhooks = WebhookService(
            settings=WebhookSettings(public_url=settings.public_url, auth_token=settings.auth_token),
            router=self.router, dispatcher=self.dispatcher, status_router=status_router,
        )
        self.fetcher = MediaFetcher(account_sid=settings.account_sid, auth_token=settings.auth_token)
        deepgram_http = None
        if settings.deepgram_base_url:
            deepgram_http = settings.deepgram_base_url.replace("ws://", "http://").replace("wss://", "https://")
        self.transcriber = DeepgramPrerecordedTranscriber(
            api_key=settings.deepgram_api_key, base_url=deepgram_http or "https://api.deepgram.com")
        self.calls: dict[str, Any] = {}
        self.ready = False
        self._lifetime = contextlib.AsyncExitStack()
        self.app = self._build_app()

    async def startup(self) -> None:
        """Warm the provider up, join the shared call registry, recover the outbox (now and periodically)."""
        await self.provider.warm_up()
        if hasattr(self.registry, "start"):
            await self.registry.start()
        await self._lifetime.enter_async_context(self.dispatcher.recovery())
        self.ready = True

    def _build_app(self) -> FastAPI:
        app = create_app(self.webhooks, startup=self.startup, shutdown=self.aclose)
        agent = self

        @app.post("/voice")
        async def voice(request: Request) -> Response:
            form = await agent.webhooks.signed_form(request)
            if isinstance(form, Response):
                return form
            try:
                token = agent.binder.mint(call_sid=form.get("CallSid", ""), caller=_e164_or_empty(form.get("From")),
                                          agent_number=_e164_or_empty(form.get("To")))
            except StreamAuthError:
                return PlainTextResponse("invalid CallSid", status_code=400)
            return Response(stream_twiml(ws_url=agent.stream_url, params={"token": token}), media_type="text/xml")

        @app.websocket("/media")
        async def media(websocket: WebSocket) -> None:
            signature = websocket.headers.get("x-twilio-signature", "")
            if not signature or not agent._validator.validate(agent.stream_url, {}, signature):
                agent._refuse("unsigned or forged handshake")
                await websocket.close(code=1008)  # before accept: the client gets HTTP 403
                return
            await websocket.accept()
            recorder = CallRecorder(websocket, folder=pathlib.Path(agent.settings.record_dir),
                                    unmasked=agent.settings.record_unmasked) if agent.settings.record_dir else None
            try:
                stream = await agent.authenticate_stream(websocket)
            except StreamAuthError as exc:
                agent._refuse(exc.reason)
                with contextlib.suppress(Exception):
                    await websocket.close(code=1008)
                if recorder is not None:
                    recorder.discard()
                return
            try:
                await agent.run_call(websocket, stream=stream, recorder=recorder)
            finally:
                if recorder is not None:
                    await recorder.close()

        return app

    @property
    def stream_url(self) -> str:
        """The media-stream URL Twilio connects to (and signs): ``wss://<public host>/media``."""
        return self.settings.public_url.replace("https://", "wss://").replace("http://", "ws://") + "/media"

    def _refuse(self, reason: str) -> None:
        self.stream_refusals += 1
        self.refusal_reasons[reason] += 1
        _log.warning("media stream refused: %s", reason)

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
        try:
            async with asyncio.timeout(start_wait):
                start: dict[str, Any] | None = None
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
            if key in params and _e164_or_empty(params[key]) != signed:
                raise StreamAuthError(f"stream parameter {key} differs from the signed call")
        return TwilioStream(call_sid=call_sid, stream_sid=stream_sid, caller=binding.caller or None,
                            agent_number=binding.agent_number or None)

    async def _caller_number(self, stream: TwilioStream) -> str | None:
        """The caller's number from the signed call, else from the Calls API (by the verified call SID)."""
        if stream.caller:
            return stream.caller
        try:
            client = self.provider._get_client()
            async with asyncio.timeout(5):
                call = await client.calls(stream.call_sid).fetch_async()
            raw = getattr(call, "_from", None)  # E.164 (from_formatted is for display)
        except Exception as exc:
            _log.warning("caller number lookup failed (%s)", exc.__class__.__name__)
            return None
        return _e164_or_empty(raw) or None

    async def run_call(self, websocket: WebSocket, *, stream: TwilioStream,
                       recorder: CallRecorder | None = None) -> None:
        """Run one call's pipeline on an accepted, authenticated Media Streams websocket."""
        from incall_sms.processors.inbound import InboundMessageProcessor
        from incall_sms.processors.sms_actions import SmsActionProcessor
        from pipecat.audio.vad.silero import SileroVADAnalyzer
        from pipecat.pipeline.pipeline import Pipeline
        from pipecat.pipeline.worker import PipelineParams, PipelineWorker
        from pipecat.processors.aggregators.llm_context import LLMContext
        from pipecat.processors.aggregators.llm_response_universal import (
            LLMContextAggregatorPair,
            LLMUserAggregatorParams,
        )
        from pipecat.serializers.twilio import TwilioFrameSerializer
        from pipecat.services.deepgram.stt import DeepgramSTTService
        from pipecat.services.openai.llm import OpenAILLMService
        from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
        from pipecat.workers.runner import WorkerRunner

        settings = self.settings
        call_sid = stream.call_sid
        caller = await self._caller_number(stream)
        agent_number = stream.agent_number
        _log.info("call %s from %s to %s", call_sid, mask(caller), mask(agent_number))
        serializer = TwilioFrameSerializer(
            stream.stream_sid, call_sid, settings.account_sid, settings.auth_token,
            base_url=settings.twilio_api_base_url,
        )
        transport = FastAPIWebsocketTransport(websocket, FastAPIWebsocketParams(
            audio_in_enabled=True, audio_out_enabled=True, add_wav_header=False, serializer=serializer))
        stt = DeepgramSTTService(api_key=settings.deepgram_api_key, base_url=settings.deepgram_base_url or "")
        llm = OpenAILLMService(api_key=settings.llm_api_key, base_url=settings.llm_base_url,
                               settings=OpenAILLMService.Settings(model=settings.llm_model,
                                                                  system_instruction=settings.system_prompt))
        if settings.tts == "tone":
            from incall_sms.pipeline.local_services import ToneTTSService

            tts: Any = ToneTTSService(sample_rate=8000)
        else:
            from pipecat.services.deepgram.tts import DeepgramTTSService

            tts = DeepgramTTSService(api_key=settings.deepgram_api_key)
        call = CallContext(call_id=call_sid, caller_number=caller, agent_number=agent_number)
        engine = ActionEngine(dispatcher=self.dispatcher, call=call, judge=EmbeddedJudge(),
                              extractor=PatternExtractor())
        sms = SmsActionProcessor(engine=engine)
        inbound = InboundMessageProcessor(fetcher=self.fetcher, transcriber=self.transcriber)
        unregister = None
        if caller and agent_number:
            unregister = await self.registry.register(caller, agent_number, inbound.deliver)
        pair = LLMContextAggregatorPair(LLMContext(), user_params=LLMUserAggregatorParams(
            vad_analyzer=SileroVADAnalyzer()))
        if recorder is not None:
            recorder.bind(call_sid=call_sid, caller=caller or "", agent_number=agent_number or "")
        stages: list[Any] = [transport.input(), stt]
        if recorder is not None:
            stages.append(recorder.transcripts())
        stages += [sms, pair.user(), llm, sms.agent_tap(), tts, transport.output(), pair.assistant(), inbound]
        pipeline = Pipeline(stages)
        worker = PipelineWorker(pipeline, params=PipelineParams(audio_in_sample_rate=8000,
                                                                audio_out_sample_rate=8000))

        @transport.event_handler("on_client_disconnected")
        async def _gone(_transport: Any, _client: Any) -> None:
            await worker.cancel()

        self.calls[call_sid] = sms
        try:
            runner = WorkerRunner(handle_sigint=False)
            await runner.add_workers(worker)
            await runner.run()
        finally:
            if unregister is not None:
                await unregister()
            self.calls.pop(call_sid, None)
            _log.info("call %s ended", call_sid)

    async def aclose(self) -> None:
        """Release shared resources (after the webhook work drained)."""
        self.ready = False
        await self._lifetime.aclose()  # stops periodic recovery
        await self.provider.aclose()
        await self.fetcher.aclose()
        await self.transcriber.aclose()
        self.outbox.close()
        if hasattr(self.registry, "aclose"):
            await self.registry.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        else:
            self.optouts.close()
        self.router.close()


class CallRecorder:
    """Writes a live call as a recording (``incall-sms-recording/1``) for replays, streamed to disk.

    Captures the Media Streams messages exactly as received and the final STT results. Lines
    go through a queue to a writer thread, so neither memory nor the event loop carries the
    call: a 30-minute call is ~90,000 media messages. Phone numbers are masked unless
    ``unmasked``; the stream token is never written. Nothing is written for a stream that is
    refused (:meth:`discard`), and the file name is only ever the verified call SID.

    Args:
        websocket: The accepted Media Streams websocket (its ASGI ``receive`` is wrapped).
        folder: Where ``<call_sid>.jsonl`` and ``<call_sid>.meta.json`` go.
        unmasked: Keep phone numbers as they are.
        max_early_messages: Messages kept before :meth:`bind` (the stream is not verified yet).
    """

    def __init__(self, websocket: Any, *, folder: pathlib.Path, unmasked: bool = False,
                 max_early_messages: int = 8) -> None:
        self._clock = time.monotonic
        self._t0 = self._clock()
        self._folder = folder
        self._unmasked = unmasked
        self._early: list[str] = []
        self._max_early = max_early_messages
        self._queue: queue.SimpleQueue[str | threading.Event | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._path: pathlib.Path | None = None
        self._closed = False
        self.stt: list[dict[str, Any]] = []
        self.call_sid = ""
        self.caller = ""
        self.agent_number = ""
        self.count = 0
        original = websocket._receive

        async def receive() -> Any:
            event = await original()
            if event.get("type") == "websocket.receive" and event.get("text"):
                self._capture(event["text"])
            return event

        websocket._receive = receive

    def _mask(self, number: str) -> str:
        return number if self._unmasked or not number else mask(number)

    def _capture(self, text: str) -> None:
        if self._closed:
            return
        try:
            message = json.loads(text)
        except ValueError:
            return
        params = message.get("start", {}).get("customParameters") if isinstance(message, dict) else None
        if isinstance(params, dict):
            params.pop("token", None)
            for key in ("from_number", "to_number"):
                if key in params:
                    params[key] = self._mask(str(params[key]))
        line = json.dumps({"t": round(self._clock() - self._t0, 3), "message": message}) + "\n"
        if self._writer is None:
            if len(self._early) < self._max_early:
                self._early.append(line)
            return
        self._queue.put(line)
        self.count += 1

    def bind(self, *, call_sid: str, caller: str, agent_number: str) -> None:
        """Start writing: the stream was verified as call ``call_sid``.

        Raises:
            ValueError: ``call_sid`` is not a Twilio call SID (it becomes the file name).
        """
        if not CALL_SID.match(call_sid):
            raise ValueError("call_sid must be a Twilio call SID")
        self.call_sid, self.caller, self.agent_number = call_sid, caller, agent_number
        self._folder.mkdir(parents=True, exist_ok=True)
        self._path = self._folder / f"{call_sid}.jsonl"
        for line in self._early:
            self._queue.put(line)
            self.count += 1
        self._early = []
        self._writer = threading.Thread(target=self._write, args=(self._path,), name="call-recorder", daemon=True)
        self._writer.start()

    def _write(self, path: pathlib.Path) -> None:
        with path.open("w", encoding="utf-8") as out:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                if isinstance(item, threading.Event):
                    out.flush()
                    item.set()
                    continue
                out.write(item)

    async def flush(self) -> None:
        """Wait until everything captured so far is on disk."""
        if self._writer is None:
            return
        done = threading.Event()
        self._queue.put(done)
        await asyncio.to_thread(done.wait)

    def discard(self) -> None:
        """Write nothing (the stream was refused)."""
        self._closed = True
        self._early = []

    def transcripts(self) -> Any:
        """A pass-through processor (after STT) recording final transcripts with their times."""
        from pipecat.frames.frames import TranscriptionFrame
        from pipecat.processors.frame_processor import FrameProcessor

        recorder = self

        class _Tap(FrameProcessor):
            async def process_frame(self, frame: Any, direction: Any) -> None:
                await super().process_frame(frame, direction)
                if isinstance(frame, TranscriptionFrame) and frame.text.strip():
                    recorder.stt.append({"t": round(recorder._clock() - recorder._t0, 3), "text": frame.text})
                await self.push_frame(frame, direction)

        return _Tap()

    async def close(self) -> pathlib.Path | None:
        """Finish the file and write ``<call_sid>.meta.json`` (off the event loop)."""
        if self._closed:
            return None
        self._closed = True
        if self._writer is None or self._path is None:
            return None
        self._queue.put(None)
        await asyncio.to_thread(self._writer.join)
        from incall_sms.pipeline.recording import FORMAT

        meta = {"format": FORMAT, "call_sid": self.call_sid, "caller": self._mask(self.caller),
                "agent_number": self._mask(self.agent_number), "stt": self.stt,
                "description": "recorded from a live call"}
        meta_path = self._folder / f"{self.call_sid}.meta.json"
        await asyncio.to_thread(meta_path.write_text, json.dumps(meta, indent=2) + "\n", "utf-8")
        _log.info("call %s recorded (%d messages)", self.call_sid, self.count)
        return self._path
