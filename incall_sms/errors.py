"""The one error tree of the SMS core.

Every error the core raises derives from :class:`SmsError`. Send errors carry a
:class:`SendErrorKind` that says, once and at the edge where the provider's error
was translated, what the dispatcher may do next:

* ``PERMANENT``: never retry (invalid number, opted out, landline ...).
* ``RETRYABLE``: safe to retry after a back-off; the provider certainly did not
  create a message (HTTP 429, connection refused before the request was sent).
* ``AMBIGUOUS``: the message may or may not exist (timeout, 5xx, connection reset
  after the request was written). Check with the provider before any resend.

Messages never contain phone numbers or message bodies: callers log them as is.
"""

from __future__ import annotations

import enum

__all__ = [
    "ActionConfigError",
    "InvalidPhoneNumberError",
    "MissingVariableError",
    "OutboxUnavailableError",
    "SendError",
    "SendErrorKind",
    "SmsError",
    "TemplateError",
]


class SmsError(Exception):
    """Base class of every error raised by the SMS core."""


class OutboxUnavailableError(SmsError):
    """The outbox database cannot be reached (or the outbox was closed).

    Raised before a claim, nothing was recorded or sent and the send may be tried again. After a
    claim the row stays as it was; the dispatcher then tells the caller the text could not be
    confirmed and recovery settles the row once the database answers (provider lookup before any
    resend). A commit whose answer was lost looks like the first case: that row too is settled by
    recovery, so a text reported "not sent" in that rare case may still go out once.
    """


class ActionConfigError(SmsError):
    """An action definition is invalid.

    Attributes:
        field: Dotted path of the offending field (``actions[0].sender``), or ``None``.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class InvalidPhoneNumberError(SmsError, ValueError):
    """A phone number could not be parsed or is not a valid, dialable number.

    The offending number is deliberately not part of the message.

    Attributes:
        reason: Short machine-readable reason (``unparseable``, ``invalid``, ``not_e164`` ...).
    """

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        where = f" in {field}" if field else ""
        super().__init__(f"invalid phone number{where}: {reason}")


class TemplateError(SmsError):
    """A template is malformed."""


class MissingVariableError(TemplateError, KeyError):
    """A template needs variables that have no value and no default.

    Attributes:
        names: The missing variable names, sorted.
    """

    def __init__(self, names: list[str]) -> None:
        self.names = sorted(set(names))
        super().__init__(f"missing template variable(s): {', '.join(self.names)}")

    def __str__(self) -> str:  # KeyError would add quotes
        return self.args[0]


class SendErrorKind(enum.Enum):
    """What the dispatcher may do after a failed send attempt."""

    PERMANENT = "permanent"
    RETRYABLE = "retryable"
    AMBIGUOUS = "ambiguous"


class SendError(SmsError):
    """A provider refused or may not have performed a send.

    Attributes:
        kind: Permanent, retryable or ambiguous (see module docs).
        reason: Stable machine-readable reason, e.g. ``opted_out``, ``invalid_number``,
            ``not_mobile``, ``rate_limited``, ``timeout``, ``server_error``.
        code: Provider error code (Twilio ``21610`` ...), or ``None``.
        status: HTTP status, or ``None`` when no response was received.
        retry_after: Seconds the provider asked us to wait, or ``None``.
    """

    def __init__(
        self,
        reason: str,
        *,
        kind: SendErrorKind,
        code: int | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.reason = reason
        self.kind = kind
        self.code = code
        self.status = status
        self.retry_after = retry_after
        parts = [f"{kind.value} send error: {reason}"]
        if code is not None:
            parts.append(f"code={code}")
        if status is not None:
            parts.append(f"status={status}")
        super().__init__(" ".join(parts))

    @property
    def retryable(self) -> bool:
        """Whether an immediate retry after back-off is safe."""
        return self.kind is SendErrorKind.RETRYABLE

    @property
    def ambiguous(self) -> bool:
        """Whether the message may exist at the provider."""
        return self.kind is SendErrorKind.AMBIGUOUS
