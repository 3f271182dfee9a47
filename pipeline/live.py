"""The live phone agent: Twilio voice webhook, Media Streams websocket, one pipecat pipeline per call.

One app, one port: ``POST /voice`` (signed; TwiML ``<Connect><Stream>`` carrying a
single-use token bound to the call), ``WS /media`` (the call; the handshake's
``X-Twilio-Signature`` and the token are checked before any pipeline is built),
``POST /sms/inbound``, ``POST /sms/status``, ``GET /health`` and ``GET /ready``. The SMS
side is :class:`~incall_sms.pipeline.service.SmsService`, exactly as a bot of your own
would use it; this module adds the voice pipeline around it.

Per call: ``TwilioFrameSerializer`` over pipecat's FastAPI websocket transport, Deepgram
STT, the agent LLM (pipecat's ``OpenAILLMService``: OpenAI or any compatible endpoint),
a TTS (Deepgram, or the offline tone TTS), the SMS action processor and its tap, and
inbound-message injection. Settings come from the environment (:class:`LiveSettings`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pathlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response

from incall_sms.pipeline import DEFAULT_ACTIONS
from incall_sms.pipeline.call_recorder import CallRecorder
from incall_sms.pipeline.service import (
    SettingsError,
    SmsService,
    SmsSettings,
    TwilioStream,
    freeze_startup_heap,
    stream_twiml,
)

__all__ = ["CallRecorder", "LiveAgent", "LiveSettings", "SettingsError", "TwilioStream", "stream_twiml"]

_log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are a friendly phone agent. Keep answers short and natural for speech. Text messages (SMS) are "
    "sent by a separate system that tells the caller itself when a text was sent or failed: never say you "
    "sent a text, and never promise to text a number the caller dictates."
)


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
    judge: str = "embedded"
    local_model: str | None = None
    database_url: str | None = None
    outbox_lease: float = 30.0
    worker_id: str | None = None
    caller_id_trust: str = "unless-failed"

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
        sms = SmsSettings.from_env(env, public_url=public)
        tts = env.get("SMS_AGENT_TTS", "deepgram")
        if tts not in ("deepgram", "tone"):
            raise SettingsError("SMS_AGENT_TTS must be 'deepgram' or 'tone'")
        return cls(
            public_url=sms.public_url, account_sid=sms.account_sid, auth_token=sms.auth_token,
            deepgram_api_key=str(required["DEEPGRAM_API_KEY"]), llm_api_key=llm_key or "none", llm_base_url=llm_url,
            llm_model=env.get("SMS_AGENT_LLM_MODEL", "gpt-4o-mini"), tts=tts, actions_path=sms.actions_path,
            state_dir=sms.state_dir, deepgram_base_url=sms.deepgram_base_url,
            twilio_api_base_url=sms.twilio_api_base_url, pool_numbers=sms.pool_numbers,
            messaging_service_sid=sms.messaging_service_sid, record_dir=env.get("SMS_RECORD_DIR") or None,
            record_unmasked=env.get("SMS_RECORD_UNMASKED", "") == "1", sender_rate=sms.sender_rate,
            redis_url=sms.redis_url, stream_token_ttl=sms.stream_token_ttl, judge=sms.judge,
            local_model=sms.local_model, database_url=sms.database_url, outbox_lease=sms.outbox_lease,
            worker_id=sms.worker_id, caller_id_trust=sms.caller_id_trust,
        )

    def sms_settings(self) -> SmsSettings:
        """The SMS part of these settings."""
        return SmsSettings(
            public_url=self.public_url, account_sid=self.account_sid, auth_token=self.auth_token,
            actions_path=self.actions_path, state_dir=self.state_dir, twilio_api_base_url=self.twilio_api_base_url,
            pool_numbers=self.pool_numbers, messaging_service_sid=self.messaging_service_sid,
            sender_rate=self.sender_rate, redis_url=self.redis_url, stream_token_ttl=self.stream_token_ttl,
            deepgram_api_key=self.deepgram_api_key, deepgram_base_url=self.deepgram_base_url, judge=self.judge,
            local_model=self.local_model, database_url=self.database_url, outbox_lease=self.outbox_lease,
            worker_id=self.worker_id, caller_id_trust=self.caller_id_trust,
        )


class LiveAgent:
    """The live phone agent: an :class:`SmsService` plus the voice pipeline of each call.

    Args:
        settings: Live settings.
        clock: ``time.time``-like callable for stream-token expiry (tests).

    Raises:
        SmsError: The action file is invalid.
        OSError: The state directory cannot be created.
    """

    def __init__(self, settings: LiveSettings, *, clock: Callable[[], float] | None = None) -> None:
        self.settings = settings
        self.sms = SmsService(settings.sms_settings(), clock=clock)
        self.app = self._build_app()

    # the SMS service's parts, under the names the rest of the code (and tests) use
    @property
    def dispatcher(self) -> Any:
        """The shared dispatcher."""
        return self.sms.dispatcher

    @property
    def registry(self) -> Any:
        """The live-call registry."""
        return self.sms.registry

    @property
    def optouts(self) -> Any:
        """The opt-out list."""
        return self.sms.optouts

    @property
    def router(self) -> Any:
        """The inbound router."""
        return self.sms.router

    @property
    def calls(self) -> dict[str, Any]:
        """Live calls by call SID."""
        return self.sms.calls

    @property
    def stream_refusals(self) -> int:
        """Media streams refused."""
        return self.sms.stream_refusals

    async def _caller_number(self, stream: TwilioStream) -> str | None:
        return await self.sms.caller_number(stream)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Any) -> AsyncIterator[None]:
        async with self.sms:
            # what every call imports lazily, imported now so the frozen heap covers it
            import pipecat.audio.vad.silero
            import pipecat.serializers.twilio
            import pipecat.services.deepgram.stt
            import pipecat.services.openai.llm
            import pipecat.transports.websocket.fastapi  # noqa: F401

            freeze_startup_heap()  # full collections no longer pause calls for tens of ms
            yield

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="incall-sms live agent", lifespan=self._lifespan, docs_url=None, redoc_url=None)
        self.sms.add_routes(app)
        agent = self

        @app.post("/voice")
        async def voice(request: Request) -> Response:
            return await agent.sms.voice_twiml(request)

        @app.websocket("/media")
        async def media(websocket: WebSocket) -> None:
            recorder = CallRecorder(websocket, folder=pathlib.Path(agent.settings.record_dir),
                                    unmasked=agent.settings.record_unmasked) if agent.settings.record_dir else None
            stream = await agent.sms.accept_stream(websocket)
            if stream is None:  # refused, closed, counted; nothing recorded
                if recorder is not None:
                    recorder.discard()
                return
            try:
                await agent.run_call(websocket, stream=stream, recorder=recorder)
            finally:
                if recorder is not None:
                    await recorder.close()

        return app

    async def run_call(self, websocket: WebSocket, *, stream: TwilioStream,
                       recorder: CallRecorder | None = None) -> None:
        """Run one call's pipeline on an accepted, authenticated Media Streams websocket."""
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
        serializer = TwilioFrameSerializer(
            stream.stream_sid, stream.call_sid, settings.account_sid, settings.auth_token,
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
        pair = LLMContextAggregatorPair(LLMContext(), user_params=LLMUserAggregatorParams(
            vad_analyzer=SileroVADAnalyzer()))
        async with self.sms.call(stream) as call:
            if recorder is not None:
                recorder.bind(call_sid=stream.call_sid, caller=call.caller or "",
                              agent_number=stream.agent_number or "")
            stages: list[Any] = [transport.input(), stt]
            if recorder is not None:
                stages.append(recorder.transcripts())
            stages += [call.processor, pair.user(), llm, call.tap]
            if recorder is not None:
                stages.append(recorder.agent_turns(call.processor.is_own_frame))
                call.inbound.add_event_handler("on_message_injected", recorder.note_inbound)
            stages += [tts, transport.output(), pair.assistant(), call.inbound]
            worker = PipelineWorker(Pipeline(stages), params=PipelineParams(audio_in_sample_rate=8000,
                                                                            audio_out_sample_rate=8000))

            @transport.event_handler("on_client_disconnected")
            async def _gone(_transport: Any, _client: Any) -> None:
                await worker.cancel()

            runner = WorkerRunner(handle_sigint=False)
            await runner.add_workers(worker)
            await runner.run()

    async def aclose(self) -> None:
        """Release shared resources."""
        await self.sms.aclose()
