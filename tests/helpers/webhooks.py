"""Helpers for webhook tests and benchmarks: the app on loopback, media and Deepgram peers, forms."""

import asyncio
import base64
import io
import os
import subprocess

import aiohttp
import uvicorn
from aiohttp import web
from PIL import Image
from twilio.request_validator import RequestValidator

from incall_sms.media.content import ffmpeg_exe
from incall_sms.pipeline.server import WebhookService, WebhookSettings, create_app
from tests.peers.loopback import free_port, serve_app
from tests.peers.twilio_peer import ACCOUNT_SID, AUTH_TOKEN

CALLER = "+14155552671"
AGENT = "+14155550100"
STRANGER = "+14155559999"
PUBLIC = "https://agent.example.com"




def make_png(size=(64, 48), color=(200, 30, 30)):
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def make_big_jpeg(target_bytes):
    # random pixels barely compress (JPEG q95 keeps ~39 % of the raw bytes)
    side = int((target_bytes / 0.39 / 3) ** 0.5)
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95)
    data = out.getvalue()
    assert 0.7 * target_bytes <= len(data) <= 1.4 * target_bytes
    return data


def ffmpeg(*args):
    return subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", *args], capture_output=True,
                          check=True).stdout


def make_amr():
    return ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1.5", "-ar", "8000", "-ac", "1",
                  "-c:a", "libopencore_amrnb", "-b:a", "12.2k", "-f", "amr", "pipe:1")


def make_mp4():
    return ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=10:duration=1.5", "-f", "lavfi",
                  "-i", "sine=frequency=300:duration=1.5", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
                  "-shortest", "-movflags", "frag_keyframe+empty_moov", "-f", "mp4", "pipe:1")


class MediaPeer:
    """Provider media host (127.0.0.1, needs Basic auth) redirecting to a signed host (localhost, no auth)."""

    def __init__(self):
        self.items = {}
        self.first_hop_auth = []
        self.second_hop_auth = []

    async def __aenter__(self):
        app = web.Application()
        app.router.add_get("/media/{id}", self._first)
        app.router.add_get("/signed/{id}", self._second)
        self._runner, self.port = await serve_app(app)
        return self

    async def __aexit__(self, *exc):
        await self._runner.cleanup()

    def url(self, item_id):
        return f"http://127.0.0.1:{self.port}/media/{item_id}"

    async def _first(self, request):
        self.first_hop_auth.append(request.headers.get("Authorization"))
        if request.match_info["id"] == "loop":  # a redirect loop (answers with or without credentials)
            raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{self.port}/media/loop")

        expected = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.Response(status=401)
        item_id = request.match_info["id"]
        return web.Response(status=307, headers={"Location": f"http://localhost:{self.port}/signed/{item_id}"})

    async def _second(self, request):
        self.second_hop_auth.append(request.headers.get("Authorization"))
        content_type, data = self.items[request.match_info["id"]]
        return web.Response(body=data, content_type=content_type)


class DeepgramRestPeer:
    def __init__(self, transcript):
        self.transcript = transcript
        self.bodies = []

    async def __aenter__(self):
        app = web.Application(client_max_size=20 * 1024 * 1024)
        app.router.add_post("/v1/listen", self._listen)
        self._runner, port = await serve_app(app)
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc):
        await self._runner.cleanup()

    async def _listen(self, request):
        assert request.headers["Authorization"] == "Token dg-test-key"
        body = await request.read()
        assert body[:4] == b"RIFF"  # converted to WAV before upload
        self.bodies.append(body)
        return web.json_response({"results": {"channels": [{"alternatives": [{"transcript": self.transcript}]}]}})


class App:
    """The webhook app on a loopback port, with a live call pipeline."""

    def __init__(self, router, dispatcher=None):
        self.service = WebhookService(settings=WebhookSettings(public_url=PUBLIC, auth_token=AUTH_TOKEN),
                                      router=router, dispatcher=dispatcher)
        self.port = free_port()
        self.validator = RequestValidator(AUTH_TOKEN)

    async def __aenter__(self):
        config = uvicorn.Config(create_app(self.service), host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.task = asyncio.get_running_loop().create_task(self.server.serve())
        while not self.server.started:
            await asyncio.sleep(0.02)
        self.session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc):
        await self.session.close()
        self.server.should_exit = True
        await self.task

    async def post(self, path, form, *, sign=True, signature=None, headers=None, raw=None):
        headers = dict(headers or {})
        if sign:
            headers["X-Twilio-Signature"] = signature or self.validator.compute_signature(PUBLIC + path, form)
        data = raw if raw is not None else form
        if raw is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        async with self.session.post(f"http://127.0.0.1:{self.port}{path}", data=data, headers=headers) as r:
            return r.status, await r.text(), r.headers.get("Content-Type", "")


_counter = iter(range(1, 10_000))


def sms_form(body="Here is the photo", media=(), from_=CALLER, to=AGENT, sid=None):
    form = {
        "MessageSid": sid or f"MM{next(_counter):032x}",
        "SmsMessageSid": "",
        "AccountSid": ACCOUNT_SID,
        "MessagingServiceSid": "",
        "From": from_,
        "To": to,
        "Body": body,
        "NumMedia": str(len(media)),
        "NumSegments": "1",
        "FromCity": "SAN FRANCISCO",
        "ApiVersion": "2010-04-01",
    }
    for i, (url, content_type) in enumerate(media):
        form[f"MediaUrl{i}"] = url
        form[f"MediaContentType{i}"] = content_type
    return form


