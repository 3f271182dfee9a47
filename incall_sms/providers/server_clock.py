"""How far this host's clock is from the API's, read from the ``Date`` header of every answer.

A lookup after an ambiguous send compares the messages' ``date_created`` (the API's clock) with
when this attempt began (this host's clock), minus a tolerance (``LOOKUP_SKEW``, 5 s). A host whose
clock runs further ahead (no time sync in a container, a VM resumed from suspend) would read the
message it just created as older than its attempt, skip it, and send the text again. The API's answers
carry its time in their ``Date`` header (whole seconds): :class:`ServerClock` keeps the offset so a lookup
can allow for it (when two readings agree, at most :data:`MAX_AHEAD`), and warns once when it is large.
The HTTP edge feeds it only what it vouches for (the Twilio provider: fresh successful JSON answers, from
an aiohttp trace config).
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable

__all__ = ["ServerClock"]

_log = logging.getLogger(__name__)

#: Offsets beyond this (seconds) are worth a warning: time sync is off on one side.
WARN_OFFSET = 2.0
#: Two readings closer than this (seconds; the header has whole seconds) agree.
AGREE = 2.0
#: The most a lookup's window is widened by (seconds): a clock further off is a broken host, told by the warning.
MAX_AHEAD = 300.0


class ServerClock:
    """The offset of this host's clock from the API's (seconds; positive: this host is ahead).

    Only what the HTTP edge vouches for is observed: a successful answer of the API itself, not served
    from a cache (no ``Age`` header). A gateway's error page or a cached answer carries another clock
    (a proxy's, or the time the answer was stored), and a window widened by it could take an older
    identical text for this attempt's. The offset is used only when the last two readings agree.

    Args:
        clock: This host's wall clock (epoch seconds).
        name: The API's name, for the warning.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time, name: str = "the API") -> None:
        self._clock = clock
        self._name = name
        self.offset: float | None = None
        self._previous: float | None = None
        self._warned = False

    def observe(self, date_header: str | None) -> None:
        """Take the API's time from one answer's ``Date`` header (ignored when missing or unreadable)."""
        if not date_header:
            return
        try:
            server = email.utils.parsedate_to_datetime(date_header).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return
        self._previous, self.offset = self.offset, self._clock() - server
        if abs(self.offset) > WARN_OFFSET + 1 and not self._warned:  # the header has whole seconds
            self._warned = True
            _log.warning("this host's clock is %.0f s %s %s's (its Date header): lookups after ambiguous sends "
                         "allow for up to %.0f s of it; fix the host's time sync", abs(self.offset),
                         "ahead of" if self.offset > 0 else "behind", self._name, MAX_AHEAD)

    def ahead(self) -> float:
        """Seconds this host is ahead of the API beyond the header's rounding, when two readings agree.

        0 when not ahead, unknown, or the last two readings disagree; at most :data:`MAX_AHEAD`.
        """
        if self.offset is None or self._previous is None or abs(self.offset - self._previous) > AGREE:
            return 0.0
        return min(MAX_AHEAD, max(0.0, min(self.offset, self._previous) - 1.0))
