"""Serve an ASGI app (the live agent's) on a loopback port inside the test's event loop."""

import asyncio

import uvicorn

from tests.peers.loopback import free_port


class LiveServer:
    """``async with LiveServer(app) as server:`` serves ``app`` at ``server.url`` (lifespan on)."""

    def __init__(self, app):
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    async def __aenter__(self):
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                                ws="websockets-sansio")
        self.server = uvicorn.Server(config)
        self.task = asyncio.get_running_loop().create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.02)
        return self

    async def __aexit__(self, *exc):
        self.server.should_exit = True
        await self.task
