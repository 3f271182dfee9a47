"""The live phone agent: Twilio voice webhook, Media Streams websocket, one pipecat pipeline per call.

One app, one port: ``POST /voice`` (TwiML ``<Connect><Stream>`` passing the caller and
called numbers as stream parameters), ``WS /media`` (the call), ``POST /sms/inbound``
and ``POST /sms/status`` (see :mod:`pipeline.server`).

Per call: ``TwilioFrameSerializer`` over pipecat's FastAPI websocket transport, Deepgram
STT, the agent LLM (pipecat's ``OpenAILLMService``: OpenAI or any compatible endpoint),
a TTS (Deepgram, or the offline tone TTS), the SMS action processor and its tap, and
inbound-message injection. Settings come from the environment (:class:`LiveSettings`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import pathlib
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import quoteattr

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response

from media.fetch import MediaFetcher
from media.transcribe import DeepgramPrerecordedTranscriber
from messaging.actions import load_actions
from messaging.dispatcher import CallContext, Dispatcher
from messaging.engine import ActionEngine
from messaging.errors import InvalidPhoneNumberError, SmsError
from messaging.inbound import InboundRouter, InProcessCallRegistry
from messaging.judges.embedded import EmbeddedJudge
from messaging.optout import SqliteOptOutStore
from messaging.outbox import Outbox
from messaging.phone import mask, normalize_e164
from messaging.providers.twilio import TwilioProvider
from messaging.ratelimit import TokenBucketLimiter
from messaging.variables import PatternExtractor
from pipeline.server import WebhookService, WebhookSettings, create_app

__all__ = ["LiveAgent", "LiveSettings", "SettingsError"]

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
    actions_path: str = "examples/actions.yaml"
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
            actions_path=env.get("SMS_ACTIONS_FILE", "examples/actions.yaml"),
            state_dir=env.get("SMS_STATE_DIR", "var"),
            deepgram_base_url=env.get("DEEPGRAM_BASE_URL") or None,
            twilio_api_base_url=env.get("TWILIO_API_BASE_URL") or None,
            pool_numbers=pool,
            messaging_service_sid=env.get("SMS_MESSAGING_SERVICE_SID") or None,
            record_dir=env.get("SMS_RECORD_DIR") or None,
            record_unmasked=env.get("SMS_RECORD_UNMASKED", "") == "1",
            sender_rate=_positive_float(env.get("SMS_SENDER_RATE", "1.0"), "SMS_SENDER_RATE"),
            redis_url=env.get("REDIS_URL") or None,
        )


def _positive_float(raw: str, name: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number") from None
    if value <= 0:
        raise SettingsError(f"{name} must be > 0")
    return value


def stream_twiml(*, ws_url: str, params: Mapping[str, str]) -> str:
    """TwiML that connects the call to our media-stream websocket with ``params``."""
    parameters = "".join(f"<Parameter name={quoteattr(k)} value={quoteattr(v)}/>" for k, v in params.items() if v)
    return (f'<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url={quoteattr(ws_url)}>'
            f"{parameters}</Stream></Connect></Response>")


class LiveAgent:
    """Everything the live agent shares across calls, plus the per-call pipeline builder.

    Args:
        settings: Live settings.
    """

    def __init__(self, settings: LiveSettings) -> None:
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
            from messaging.redis_store import RedisOptOutStore, RedisRateLimiter, RedisSeenKeys, connect

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

            from messaging.redis_store import RedisCallRegistry

            self.registry = RedisCallRegistry(self.redis, worker_id=f"{socket.gethostname()}-{_os.getpid()}")
        self.router = InboundRouter(registry=self.registry, optouts=self.optouts, store_path=state / "inbound.db",
                                    seen=seen)
        if self.redis is not None:
            self.registry.orphan = self.router.store_unrouted
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
        self.app = self._build_app()

    async def startup(self) -> None:
        """Warm the provider up, join the shared call registry, finish sends a previous run left unfinished."""
        await self.provider.warm_up()
        if hasattr(self.registry, "start"):
            await self.registry.start()
        results = await self.dispatcher.recover()
        if results:
            _log.info("recovered %d unfinished send(s) from the outbox", len(results))

    def _build_app(self) -> FastAPI:
        app = create_app(self.webhooks, startup=self.startup, shutdown=self.aclose)
        agent = self

        @app.post("/voice")
        async def voice(request: Request) -> Response:
            form = await agent.webhooks.signed_form(request)
            if isinstance(form, Response):
                return form
            ws_url = agent.settings.public_url.replace("https://", "wss://").replace("http://", "ws://") + "/media"
            twiml = stream_twiml(ws_url=ws_url, params={
                "from_number": form.get("From", ""), "to_number": form.get("To", ""),
                "call_sid": form.get("CallSid", ""),
            })
            return Response(twiml, media_type="text/xml")

        @app.websocket("/media")
        async def media(websocket: WebSocket) -> None:
            await websocket.accept()
            recorder = CallRecorder(websocket, unmasked=agent.settings.record_unmasked) \
                if agent.settings.record_dir else None
            try:
                await agent.run_call(websocket, recorder=recorder)
            finally:
                if recorder is not None:
                    recorder.save(pathlib.Path(agent.settings.record_dir or "."))

        return app

    async def _caller_number(self, call_data: Any) -> str | None:
        raw = call_data.from_number if hasattr(call_data, "from_number") else None
        if not raw and call_data.call_id:
            try:  # fall back to the Calls API
                client = self.provider._get_client()
                async with asyncio.timeout(5):
                    call = await client.calls(call_data.call_id).fetch_async()
                raw = getattr(call, "_from", None)  # E.164 (from_formatted is for display)
            except Exception as exc:
                _log.warning("caller number lookup failed (%s)", exc.__class__.__name__)
        if not raw:
            return None
        try:
            return normalize_e164(raw, default_region=None, field="from_number", allow_premium=True)
        except InvalidPhoneNumberError:
            return None

    async def run_call(self, websocket: WebSocket, *, recorder: CallRecorder | None = None) -> None:
        """Run one call's pipeline on an accepted Media Streams websocket."""
        from pipecat.audio.vad.silero import SileroVADAnalyzer
        from pipecat.pipeline.pipeline import Pipeline
        from pipecat.pipeline.worker import PipelineParams, PipelineWorker
        from pipecat.processors.aggregators.llm_context import LLMContext
        from pipecat.processors.aggregators.llm_response_universal import (
            LLMContextAggregatorPair,
            LLMUserAggregatorParams,
        )
        from pipecat.runner.utils import parse_telephony_websocket
        from pipecat.serializers.twilio import TwilioFrameSerializer
        from pipecat.services.deepgram.stt import DeepgramSTTService
        from pipecat.services.openai.llm import OpenAILLMService
        from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
        from pipecat.workers.runner import WorkerRunner

        from processors.inbound import InboundMessageProcessor
        from processors.sms_actions import SmsActionProcessor

        settings = self.settings
        _transport_type, call_data = await parse_telephony_websocket(websocket)
        call_sid = call_data.call_id or "unknown"
        caller = await self._caller_number(call_data)
        agent_number = None
        if getattr(call_data, "to_number", None):
            try:
                agent_number = normalize_e164(call_data.to_number, default_region=None, field="to_number")
            except InvalidPhoneNumberError:
                agent_number = None
        _log.info("call %s from %s to %s", call_sid, mask(caller), mask(agent_number))
        serializer = TwilioFrameSerializer(
            call_data.stream_id, call_sid, settings.account_sid, settings.auth_token,
            base_url=settings.twilio_api_base_url,
        )
        transport = FastAPIWebsocketTransport(websocket, FastAPIWebsocketParams(
            audio_in_enabled=True, audio_out_enabled=True, add_wav_header=False, serializer=serializer))
        stt = DeepgramSTTService(api_key=settings.deepgram_api_key, base_url=settings.deepgram_base_url or "")
        llm = OpenAILLMService(api_key=settings.llm_api_key, base_url=settings.llm_base_url,
                               settings=OpenAILLMService.Settings(model=settings.llm_model,
                                                                  system_instruction=settings.system_prompt))
        if settings.tts == "tone":
            from pipeline.local_services import ToneTTSService

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
            recorder.call_sid, recorder.caller, recorder.agent_number = call_sid, caller or "", agent_number or ""
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
    """Writes a live call as a recording (``incall-sms-recording/1``) for replays.

    Captures the Media Streams messages exactly as received and the final STT results;
    phone numbers are masked unless ``unmasked``.
    """

    def __init__(self, websocket: WebSocket, *, unmasked: bool = False) -> None:
        import time

        self._clock = time.monotonic
        self._t0 = self._clock()
        self._unmasked = unmasked
        self.messages: list[dict[str, Any]] = []
        self.stt: list[dict[str, Any]] = []
        self.call_sid = ""
        self.caller = ""
        self.agent_number = ""
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
        import json

        try:
            message = json.loads(text)
        except ValueError:
            return
        params = message.get("start", {}).get("customParameters") if isinstance(message, dict) else None
        if isinstance(params, dict):
            for key in ("from_number", "to_number"):
                if key in params:
                    params[key] = self._mask(str(params[key]))
        self.messages.append({"t": round(self._clock() - self._t0, 3), "message": message})

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

    def save(self, folder: pathlib.Path) -> pathlib.Path | None:
        """Write ``<call_sid>.jsonl`` and ``<call_sid>.meta.json`` into ``folder``."""
        import json

        from pipeline.recording import FORMAT

        if not self.messages:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        name = self.call_sid or "call"
        events = folder / f"{name}.jsonl"
        events.write_text("".join(json.dumps(m) + "\n" for m in self.messages), encoding="utf-8")
        meta = {"format": FORMAT, "call_sid": name, "caller": self._mask(self.caller),
                "agent_number": self._mask(self.agent_number), "stt": self.stt,
                "description": "recorded from a live call"}
        (folder / f"{name}.meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _log.info("call %s recorded (%d messages)", name, len(self.messages))
        return events
