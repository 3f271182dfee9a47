"""A loopback peer of Deepgram's live transcription websocket (``/v1/listen``).

It checks the ``Authorization: Token`` header, counts the audio it receives
(linear16 at the ``sample_rate`` query parameter), and sends a final ``Results``
message for each scripted utterance once that much audio has arrived.
"""

from __future__ import annotations

import json
import uuid
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve


class DeepgramPeer:
    """Use as ``async with DeepgramPeer([(2.0, "text me the link")]) as peer:``."""

    def __init__(self, script: list[tuple[float, str]], *, api_key: str = "dg-test-key") -> None:
        self.script = sorted(script)
        self.api_key = api_key
        self.connections = 0
        self.audio_seconds = 0.0
        self.sent: list[str] = []
        self.rejected = 0
        self.base_url = ""

    async def __aenter__(self) -> DeepgramPeer:
        self._server = await serve(self._handle, "127.0.0.1", 0, process_request=self._check)
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.base_url = f"ws://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    def _check(self, connection: ServerConnection, request):
        if request.headers.get("Authorization") != f"Token {self.api_key}":
            self.rejected += 1
            return connection.respond(401, "unauthorized\n")
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        self.connections += 1
        query = parse_qs(urlsplit(connection.request.path).query)
        rate = int(query.get("sample_rate", ["16000"])[0])
        pending = list(self.script)
        received = 0
        async for message in connection:
            if isinstance(message, bytes):
                received += len(message)
                self.audio_seconds = received / 2 / rate
                while pending and pending[0][0] <= self.audio_seconds:
                    _, text = pending.pop(0)
                    await connection.send(json.dumps(self._result(text, self.audio_seconds)))
                    self.sent.append(text)
            else:
                data = json.loads(message)
                if data.get("type") == "CloseStream":
                    break

    @staticmethod
    def _result(text: str, at: float) -> dict:
        return {
            "type": "Results", "channel_index": [0, 1], "duration": 1.2, "start": max(0.0, at - 1.2),
            "is_final": True, "speech_final": True, "from_finalize": False,
            "channel": {"alternatives": [{"transcript": text, "confidence": 0.98, "words": []}]},
            "metadata": {"request_id": str(uuid.uuid4()), "model_uuid": str(uuid.uuid4()),
                         "model_info": {"name": "peer", "version": "1", "arch": "peer"}},
        }
