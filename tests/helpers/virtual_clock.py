"""A virtual-time clock for tests: ``sleep`` waits until time is advanced to its deadline.

Unlike :class:`incall_sms.clock.ManualClock` (every sleep advances the shared time at once, so
concurrent sleeps add up), time here jumps to the earliest pending deadline only when every
task is idle, as on a real clock, but without waiting.
"""

import asyncio
import contextlib
import heapq
import itertools


class VirtualClock:
    def __init__(self, start=1_800_000_000.0):
        self._start = start
        self._t = 0.0
        self._timers = []
        self._seq = itertools.count()

    def now(self):
        return self._start + self._t

    def monotonic(self):
        return self._t

    async def sleep(self, seconds):
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self._t + seconds, next(self._seq), future))
        await future

    @contextlib.asynccontextmanager
    async def running(self):
        """Drive virtual time while the block runs."""
        driver = asyncio.get_running_loop().create_task(self._drive())
        try:
            yield self
        finally:
            driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await driver

    async def _drive(self):
        while True:
            for _ in range(50):  # let every runnable task reach its next sleep
                await asyncio.sleep(0)
            while self._timers and self._timers[0][2].done():
                heapq.heappop(self._timers)  # cancelled sleepers
            if not self._timers:
                await asyncio.sleep(0.001)
                continue
            deadline, _, future = heapq.heappop(self._timers)
            self._t = max(self._t, deadline)
            future.set_result(None)
