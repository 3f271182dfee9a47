"""The call clock of a replay: recording seconds, one clock for everything a report stamps."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["CallClock"]


class CallClock:
    """Call time of a replay: the recording's seconds, never ahead of what the pipeline was given.

    Every time a replay reports (spoken lines, caller transcripts, texts sent, inbound texts,
    judge decisions) is :meth:`now` of this one clock, so they compare with each other and with
    the recording. The driver marks each recorded event as it delivers it (:meth:`delivered`);
    between events the clock runs ``speed`` times faster than the wall clock but stops at the
    next event not delivered yet. So when the driver falls behind (a loaded machine) or waits
    (for a slow STT to catch up), call time waits too: a time it reports lies between the
    last event delivered and the next one, one audio frame (20 ms) apart, whatever the load.

    Args:
        speed: Call seconds per wall-clock second (8 = eight times faster than the call).
        monotonic: Wall clock (injectable for tests).
    """

    def __init__(self, speed: float, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.speed = speed
        self._monotonic = monotonic
        self._started = False
        self._at = 0.0
        self._wall = 0.0
        self._cap = 0.0
        self._schedule0 = 0.0
        self.waited = 0.0

    def start(self, *, first_event: float | None) -> None:
        """Call time 0 is now; the clock will not pass ``first_event`` until it is delivered."""
        self._started = True
        self._at, self._wall = 0.0, self._monotonic()
        self._schedule0 = self._wall
        self._cap = math.inf if first_event is None else first_event

    def wait(self, seconds: float) -> None:
        """The driver waited ``seconds`` of wall time on purpose: later events are due that much later."""
        self.waited += seconds

    def delivered(self, t: float, *, next_event: float | None) -> None:
        """The recorded event at call time ``t`` was delivered; the next one is due at ``next_event``."""
        self._at = max(t, self.now())
        self._wall = self._monotonic()
        self._cap = math.inf if next_event is None else max(next_event, self._at)

    def _projected(self) -> float:
        return self._at + (self._monotonic() - self._wall) * self.speed

    def now(self) -> float:
        """Seconds of call time (0 before :meth:`start`)."""
        if not self._started:
            return 0.0
        return min(self._projected(), self._cap)

    def wall_delay(self, t: float) -> float:
        """Wall-clock seconds until the event at call time ``t`` is due (0 when due or overdue).

        Due times follow the schedule set at :meth:`start` (plus deliberate waits), so a driver
        that fell behind catches up; the clock itself never runs ahead of what was delivered.
        """
        if not self._started:
            return 0.0
        return max(0.0, self._schedule0 + self.waited + t / self.speed - self._monotonic())
