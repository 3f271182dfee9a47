#
# The same Twilio bot, in tool mode: the agent LLM decides when to text, by calling one function per
# SMS action ("send_sms_<action>"). The function result is the truth ("sent" only once Twilio
# accepted the text; "failed" with the line to say; "skipped" with the details to ask for), and a
# barge-in never cancels a send (the functions are registered with cancel_on_interruption=False).
#
#   pip install pipecat-incall-sms
#   export TWILIO_ACCOUNT_SID=AC... TWILIO_AUTH_TOKEN=... DEEPGRAM_API_KEY=... OPENAI_API_KEY=...
#   export PUBLIC_URL=https://your-host.example.com
#   python twilio_sms_tools.py
#

"""Twilio phone bot with in-call SMS (tool mode: the agent LLM calls the SMS functions)."""

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

SYSTEM = ("You are the friendly phone receptionist of a restaurant. Keep answers short. When the caller wants "
          "something by text, call the matching send_sms function and tell them what its result says.")

sms = SmsService(SmsSettings.from_env())
app = FastAPI(lifespan=sms.lifespan)
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
    async with sms.call(stream) as call:
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

    tools = call.toolset()  # one function per SMS action of the action file
    tools.register(llm)  # cancel_on_interruption=False: a barge-in never cancels a send
    context = LLMContextAggregatorPair(LLMContext(tools=tools.tools()), user_params=LLMUserAggregatorParams(
        vad_analyzer=SileroVADAnalyzer()))

    pipeline = Pipeline([
        transport.input(),
        stt,
        context.user(),
        llm,
        make_tts(),
        transport.output(),
        context.assistant(),
        call.inbound,  # last: texts the caller sends are added to the context
    ])
    worker = PipelineWorker(pipeline, params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000))

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport, client):
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()


if __name__ == "__main__":
    uvicorn.run(app, host=os.getenv("HOST", "0.0.0.0"), port=int(os.getenv("PORT", "8765")))  # noqa: S104
