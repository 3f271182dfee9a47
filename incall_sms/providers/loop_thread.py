"""A private event loop on its own thread, for client work that must stay off the audio loop.

The twilio client's HTTP work (building the request, aiohttp's connection and response handling,
parsing the answer into a ``MessageInstance``) costs about a millisecond of CPU per message. On
the pipeline's event loop that millisecond sits between two audio frames, and fifty sends in flight
add up to a visible gap. :class:`LoopThread` runs such work on a second event loop in a daemon
thread: the pipeline's loop only hands the coroutine over and awaits the result.

    thread = LoopThread(name="twilio-http")
    receipt = await thread.run(lambda: client.messages.create_async(...))
    await thread.aclose()

Cancelling the awaiting task cancels the work on the thread's loop; exceptions raised there are
raised to the awaiting task unchanged.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """An event loop running on a daemon thread, started on first use.

    Args:
        name: The thread's name (shows in profilers and thread dumps).
    """

    def __init__(self, *, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def running(self) -> bool:
        """Whether the thread's loop is running."""
        return self._loop is not None and self._loop.is_running()

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the {self.name} thread was closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    try:
                        loop.run_forever()
                    finally:  # whatever is still running there ends now (cancelled), then the loop closes
                        pending = asyncio.all_tasks(loop)
                        for task in pending:
                            task.cancel()
                        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                        loop.run_until_complete(loop.shutdown_asyncgens())
                        loop.close()

                self._thread = threading.Thread(target=serve, name=self.name, daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    async def run(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work()`` on the thread's loop and return its result to the calling loop.

        Args:
            work: Called on the thread's loop; returns the awaitable to run there (a coroutine
                created on that loop, so objects it creates belong to that loop).

        Raises:
            RuntimeError: The thread was closed.
        """
        loop = self._start()

        async def call() -> T:
            return await work()

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), loop))

    async def aclose(self, cleanup: Callable[[], Awaitable[object]] | None = None) -> None:
        """Run ``cleanup()`` on the thread's loop (if it ever started), then stop and join the thread.

        Idempotent; the join happens on an executor thread, never blocking the calling loop.
        """
        with self._lock:
            if self._closed:
                return
            loop, thread = self._loop, self._thread
        try:
            if loop is not None and cleanup is not None:
                await self.run(cleanup)
        finally:
            with self._lock:
                self._closed = True
            if loop is not None and thread is not None:
                loop.call_soon_threadsafe(loop.stop)
                await asyncio.get_running_loop().run_in_executor(None, thread.join)
