"""Phone numbers out of the twilio library's own request logs.

The twilio client logs every request at INFO (``twilio.http_client``, ``twilio.async_http_client``):
its URL and query parameters, which for a message lookup are the caller's and the agent's numbers
(``To=%2B14155552671``). A server logging at INFO would write them in clear. :func:`mask_twilio_logs`
puts a filter on those two loggers that masks every number in their records (``+1******2671``),
so the requests stay visible for debugging and the numbers do not.
"""

from __future__ import annotations

import logging
import re

from incall_sms.phone import mask

__all__ = ["MaskNumbers", "mask_twilio_logs"]

#: An E.164 number, its ``+`` plain or URL-encoded (``%2B``), in any text.
_NUMBER = re.compile(r"(?:\+|%2[Bb])\d{6,15}")
_TWILIO_LOGGERS = ("twilio.http_client", "twilio.async_http_client")


def _masked(match: re.Match[str]) -> str:
    text = match.group(0)
    plus, digits = ("+", text[1:]) if text.startswith("+") else (text[:3], text[3:])
    return plus + mask("+" + digits)[1:]


class MaskNumbers(logging.Filter):
    """A logging filter that masks phone numbers in a record's message (it never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask the numbers in ``record``'s formatted message; keep the record."""
        message = record.getMessage()
        masked = _NUMBER.sub(_masked, message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def mask_twilio_logs() -> None:
    """Put a :class:`MaskNumbers` filter on the twilio library's request loggers (once)."""
    for name in _TWILIO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, MaskNumbers) for f in logger.filters):
            logger.addFilter(MaskNumbers())
