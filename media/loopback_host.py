"""A loopback stand-in for the provider's media host (simulation and replays; no network)."""

from __future__ import annotations

import io
import uuid
from typing import Any

from incall_sms.media.fetch import MediaFetcher, MediaPolicy

__all__ = ["LoopbackMediaHost"]


class LoopbackMediaHost:
    """Serves attachments on 127.0.0.1 so they travel the same fetch path as Twilio media."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[str, bytes]] = {}
        self._runner: Any = None
        self.port = 0

    async def start(self) -> None:
        """Start serving on an ephemeral loopback port."""
        from aiohttp import web

        async def serve(request: web.Request) -> web.Response:
            item = self._items.get(request.match_info["id"])
            if item is None:
                return web.Response(status=404)
            return web.Response(body=item[1], content_type=item[0])

        app = web.Application()
        app.router.add_get("/media/{id}", serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def add(self, data: bytes, content_type: str) -> str:
        """Serve ``data``; return its URL."""
        item = uuid.uuid4().hex
        self._items[item] = (content_type, data)
        return f"http://127.0.0.1:{self.port}/media/{item}"

    def add_photo(self, caption: str) -> str:
        """Draw a small photo for ``caption``; return its URL."""
        from PIL import Image, ImageDraw

        image = Image.new("RGB", (320, 240), (90, 140, 200))
        ImageDraw.Draw(image).text((12, 110), caption[:40], fill=(255, 255, 255))
        out = io.BytesIO()
        image.save(out, format="JPEG")
        return self.add(out.getvalue(), "image/jpeg")

    def fetcher(self) -> MediaFetcher:
        """A media fetcher allowed to fetch from this host only."""
        return MediaFetcher(account_sid="AC" + "0" * 32, auth_token="loopback",  # noqa: S106 - no secret
                            policy=MediaPolicy(allowed_hosts=("127.0.0.1",), auth_hosts=("127.0.0.1",),
                                               allow_private=True))

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
