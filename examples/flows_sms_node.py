#
# A pipecat-flows conversation in which one node texts the caller their booking confirmation and the
# flow branches on what really happened: to "sms_sent" only once Twilio accepted the text, otherwise
# to "sms_failed" (the agent reads the details out instead). Flows ship inside pipecat-ai (pipecat.flows).
#
#   pip install pipecat-incall-sms
#   export TWILIO_ACCOUNT_SID=AC... TWILIO_AUTH_TOKEN=... DEEPGRAM_API_KEY=... OPENAI_API_KEY=...
#   export PUBLIC_URL=https://your-host.example.com
#   python flows_sms_node.py
#

"""Twilio phone bot whose pipecat-flows node sends an SMS and branches on sent / failed."""

import os

import uvicorn
from fastapi import FastAPI, Request, WebSocket
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.flows import FlowArgs, FlowManager, FlowsFunctionSchema, NodeConfig
from pipecat.frames.frames import TTSSpeakFrame
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


# -- the flow -------------------------------------------------------------------------------------------


async def text_confirmation(args: FlowArgs, flow_manager: FlowManager):
    """Send the booking_confirmation action's text; the next node depends on what really happened."""
    call: CallSms = flow_manager.state["sms"]
    await flow_manager.worker.queue_frame(TTSSpeakFrame("One moment, I'm texting that to you.",
                                                        append_to_context=False))
    result = await call.send("booking_confirmation", **{k: str(v) for k, v in args.items() if v})
    if result["status"] in ("sent", "already_sent"):
        return result, sms_sent_node(result)
    return result, sms_failed_node(result)


def booking_node() -> NodeConfig:
    return NodeConfig(
        name="booking",
        role_message="You are the friendly phone receptionist of a restaurant. Keep answers short.",
        task_messages=[{"role": "developer", "content": (
            "Help the caller with their table booking. When they want the confirmation by text, call "
            "text_confirmation with the booking time.")}],
        functions=[FlowsFunctionSchema(
            name="text_confirmation",
            description="Text the caller their booking confirmation.",
            properties={"booking_time": {"type": "string", "description": "date and time of the booking"},
                        "caller_name": {"type": "string", "description": "the caller's first name"}},
            required=["booking_time"],
            handler=text_confirmation,
        )],
    )


def sms_sent_node(result: dict) -> NodeConfig:
    return NodeConfig(name="sms_sent", task_messages=[{"role": "developer", "content": (
        f"The confirmation text was sent to the caller's {result.get('to', 'phone')}. Say so in one short "
        "sentence, then ask whether there is anything else.")}], functions=[])


def sms_failed_node(result: dict) -> NodeConfig:
    return NodeConfig(name="sms_failed", task_messages=[{"role": "developer", "content": (
        f"The confirmation text could NOT be sent ({result.get('reason') or result['status']}). Say so honestly, "
        "read the booking details out loud instead, and ask whether there is anything else.")}], functions=[])


# -- the bot --------------------------------------------------------------------------------------------


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
                           settings=OpenAILLMService.Settings(model=os.getenv("OPENAI_MODEL", "gpt-4o-mini")))
    context = LLMContextAggregatorPair(LLMContext(), user_params=LLMUserAggregatorParams(
        vad_analyzer=SileroVADAnalyzer()))

    pipeline = Pipeline([transport.input(), stt, context.user(), llm, make_tts(), transport.output(),
                         context.assistant(), call.inbound])
    worker = PipelineWorker(pipeline, params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000))
    flow_manager = FlowManager(llm=llm, context_aggregator=context, worker=worker, transport=transport)
    flow_manager.state["sms"] = call

    @transport.event_handler("on_client_connected")
    async def on_client_connected(transport, client):
        await flow_manager.initialize(booking_node())

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport, client):
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()


if __name__ == "__main__":
    uvicorn.run(app, host=os.getenv("HOST", "0.0.0.0"), port=int(os.getenv("PORT", "8765")))  # noqa: S104
