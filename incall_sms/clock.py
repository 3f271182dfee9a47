"""Injectable clocks: the real one and a manual one for tests."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "ManualClock", "ScaledClock", "SystemClock"]


class Clock(Protocol):
    """Time source used for back-off, deadlines and timestamps."""

    def now(self) -> float:
        """Wall-clock time in seconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Monotonic time in seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        """Wall-clock time in seconds since the epoch."""
        return time.time()

    def monotonic(self) -> float:
        """Monotonic time in seconds."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleep on the event loop."""
        await asyncio.sleep(seconds)


class ScaledClock(SystemClock):
    """The real clock whose waits run ``speed`` times faster (a replay at ``speed``).

    Timestamps stay real (they are compared with the provider's), only back-off and other
    waits shrink, in step with a replay that plays the call ``speed`` times faster.

    Args:
        speed: How many times faster waits run (>= 1).
    """

    def __init__(self, speed: float) -> None:
        if speed < 1:
            raise ValueError("speed must be >= 1")
        self.speed = speed

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds / speed`` on the event loop."""
        await asyncio.sleep(seconds / self.speed)


class ManualClock:
    """A clock that only moves when told to; ``sleep`` advances it instantly.

    Args:
        start: Initial wall-clock time (epoch seconds).
    """

    def __init__(self, *, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._mono = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        """Current fake wall-clock time."""
        return self._now

    def monotonic(self) -> float:
        """Current fake monotonic time."""
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        self._now += seconds
        self._mono += seconds

    async def sleep(self, seconds: float) -> None:
        """Record the sleep, advance time, and yield to the loop once."""
        self.sleeps.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)
