#
# An existing pipecat Twilio phone bot, plus in-call SMS: the watcher texts the caller what they ask
# for (judged from the conversation and the action file), speaks a filler while sending and a
# confirmation only once Twilio accepted the text, and brings texts the caller sends into the call.
#
#   pip install pipecat-incall-sms
#   export TWILIO_ACCOUNT_SID=AC... TWILIO_AUTH_TOKEN=... DEEPGRAM_API_KEY=... OPENAI_API_KEY=...
#   export PUBLIC_URL=https://your-host.example.com SMS_ACTIONS_FILE=actions.yaml   # optional: your actions
#   python twilio_sms_watcher.py
#
# Twilio number: voice webhook  -> POST $PUBLIC_URL/voice
#                messaging webhook -> POST $PUBLIC_URL/sms/inbound
#

"""Twilio phone bot with in-call SMS (watcher mode: conditions judged from the conversation)."""

import os

import uvicorn
from fastapi import FastAPI, Request, WebSocket
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair, LLMUserAggregatorParams
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.services.deepgram.stt import DeepgramSTTService
from pipecat.services.deepgram.tts import DeepgramTTSService
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from pipecat.workers.runner import WorkerRunner

from incall_sms.pipeline.service import CallSms, SmsService, SmsSettings, TwilioStream

SYSTEM = ("You are the friendly phone receptionist of a restaurant. Keep answers short. A separate system "
          "sends text messages and tells the caller itself: never say you sent a text.")

sms = SmsService(SmsSettings.from_env())  # TWILIO_*, PUBLIC_URL, SMS_* (see the README's table)
app = FastAPI(lifespan=sms.lifespan)  # warm-up, outbox recovery (now and periodically), shutdown
# Every entry point checks Twilio's X-Twilio-Signature (HMAC of PUBLIC_URL + the request, keyed by the auth token):
# POST /sms/inbound and /sms/status answer 403 when it is missing or wrong; GET /health and /ready carry counts only.
sms.add_routes(app)


@app.post("/voice")
async def voice(request: Request):
    return await sms.voice_twiml(request)  # 403 unless X-Twilio-Signature is valid; mints a single-use token


@app.websocket("/media")
async def media(websocket: WebSocket):
    # the handshake's X-Twilio-Signature (else HTTP 403), then the token /voice minted (else closed, 1008)
    stream = await sms.accept_stream(websocket)
    if stream is None:
        return
    async with sms.call(stream) as call:  # the caller's texts reach this call while it runs
        await run_bot(websocket, stream, call)


def make_tts():
    if os.getenv("EXAMPLE_TTS") == "tone":  # offline stand-in (the tests use it)
        from incall_sms.pipeline.local_services import ToneTTSService

        return ToneTTSService(sample_rate=8000)
    return DeepgramTTSService(api_key=os.environ["DEEPGRAM_API_KEY"])


async def run_bot(websocket: WebSocket, stream: TwilioStream, call: CallSms):
    serializer = TwilioFrameSerializer(stream.stream_sid, stream.call_sid, os.environ["TWILIO_ACCOUNT_SID"],
                                       os.environ["TWILIO_AUTH_TOKEN"], base_url=os.getenv("TWILIO_API_BASE_URL"))
    transport = FastAPIWebsocketTransport(websocket, FastAPIWebsocketParams(
        audio_in_enabled=True, audio_out_enabled=True, add_wav_header=False, serializer=serializer))
    stt = DeepgramSTTService(api_key=os.environ["DEEPGRAM_API_KEY"], base_url=os.getenv("DEEPGRAM_BASE_URL", ""))
    llm = OpenAILLMService(api_key=os.getenv("OPENAI_API_KEY", "none"), base_url=os.getenv("OPENAI_BASE_URL"),
                           settings=OpenAILLMService.Settings(model=os.getenv("OPENAI_MODEL", "gpt-4o-mini"),
                                                              system_instruction=SYSTEM))
    context = LLMContextAggregatorPair(LLMContext(), user_params=LLMUserAggregatorParams(
        vad_analyzer=SileroVADAnalyzer()))

    pipeline = Pipeline([
        transport.input(),
        stt,
        call.processor,  # SMS watcher: between STT and the user aggregator (which swallows transcripts)
        context.user(),
        llm,
        call.tap,  # right after the LLM: the filler and confirmation go straight to the TTS
        make_tts(),
        transport.output(),
        context.assistant(),
        call.inbound,  # last: texts the caller sends are added to the context
    ])
    worker = PipelineWorker(pipeline, params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000))

    @call.processor.event_handler("on_sms_sent")
    async def on_sms_sent(processor, event):
        print(f"texted {event.to_masked}: {event.action} ({event.segments} segment(s))")

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport, client):
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()


if __name__ == "__main__":
    uvicorn.run(app, host=os.getenv("HOST", "0.0.0.0"), port=int(os.getenv("PORT", "8765")))  # noqa: S104
