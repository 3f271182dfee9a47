"""The provider interface the dispatcher talks to."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Literal, Protocol

__all__ = [
    "DELIVERY_ERRORS",
    "FAILED_STATUSES",
    "Channel",
    "OutboundSms",
    "ProviderReceipt",
    "SmsProvider",
    "channel_address",
    "content_variables_json",
    "delivery_reason",
]

Channel = Literal["sms", "whatsapp"]


def channel_address(number: str, channel: str) -> str:
    """The provider address of an E.164 ``number`` on ``channel``: ``+1...`` (SMS) or ``whatsapp:+1...``."""
    return f"whatsapp:{number}" if channel == "whatsapp" else number


def content_variables_json(values: Mapping[str, str]) -> str:
    """A Content template's variables as the JSON object string Twilio takes (``ContentVariables``)."""
    return json.dumps(dict(values), ensure_ascii=False, separators=(",", ":"))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class OutboundSms:
    """One message as handed to a provider.

    Numbers are bare E.164 on every channel; the provider addresses them for the channel
    (:attr:`to_address`, :attr:`from_address`).

    Attributes:
        to: Destination, E.164.
        from_: Sender number (E.164), or ``None`` when ``messaging_service_sid`` picks it.
        messaging_service_sid: Twilio Messaging Service (pool) SID, or ``None``.
        body: Text to send (already smart-encoded when the action asks for it); empty for a
            Content template message (``content_sid``), whose text the template holds.
        media_urls: Public media URLs (MMS), at most 10.
        key: The outbox idempotency key (for local bookkeeping; not sent to Twilio).
        status_callback: URL for delivery status callbacks, or ``None``.
        validity_period: Seconds the provider may queue the message before dropping it.
        channel: ``sms`` or ``whatsapp``.
        content_sid: A Twilio Content template (``HX...``) sent instead of ``body``, or ``None``.
        content_variables: The template's variables as a JSON object string (sent as is), or ``None``.
    """

    to: str
    from_: str | None
    body: str
    key: str
    messaging_service_sid: str | None = None
    media_urls: tuple[str, ...] = ()
    status_callback: str | None = None
    validity_period: int | None = None
    channel: Channel = "sms"
    content_sid: str | None = None
    content_variables: str | None = None

    @property
    def to_address(self) -> str:
        """The destination as the provider addresses it on :attr:`channel`."""
        return channel_address(self.to, self.channel)

    @property
    def from_address(self) -> str | None:
        """The sender as the provider addresses it on :attr:`channel` (``None`` with a Messaging Service)."""
        return channel_address(self.from_, self.channel) if self.from_ else None

    def __repr__(self) -> str:
        from incall_sms.phone import mask

        extra = f", channel={self.channel}" if self.channel != "sms" else ""
        extra += f", content={self.content_sid}" if self.content_sid else ""
        return (f"OutboundSms(key={self.key!r}, to={mask(self.to)}, from={mask(self.from_)}, "
                f"chars={len(self.body)}{extra})")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProviderReceipt:
    """What the provider said when it accepted a message.

    Attributes:
        sid: Provider message id.
        status: Provider status at acceptance (``queued``, ``accepted`` ...).
        segments: Provider's segment count, when reported.
        created_at: When the provider created the message (epoch seconds, its clock), when known.
        match: For a lookup's candidate: ``same`` (its body is this text as the provider may store it) or
            ``maybe`` (it could be this text or another one: see :mod:`incall_sms.providers.stored_text`).
        error_code: The provider's error code for a message that failed (:data:`FAILED_STATUSES`).
    """

    sid: str
    status: str
    segments: int | None = None
    created_at: float | None = None
    match: Literal["same", "maybe"] = "same"
    error_code: int | None = None


#: Provider statuses of a message that was created and will not arrive.
FAILED_STATUSES = frozenset({"failed", "undelivered", "canceled"})

#: Delivery error codes from status callbacks, as failure reasons.
DELIVERY_ERRORS: Mapping[int, str] = {
    30003: "unreachable",
    30004: "blocked",
    30005: "invalid_number",
    30006: "not_mobile",
    30007: "filtered",
    30008: "unknown_error",
    30034: "sender_unregistered",
    21610: "opted_out",
    63016: "whatsapp_window_closed",
    63003: "not_on_whatsapp",
    63024: "not_on_whatsapp",
    63002: "sender_not_capable",
    63005: "rejected",
    63021: "rejected",
    63018: "rate_limited",
    63049: "rejected",  # Meta did not deliver a marketing template
    63014: "blocked",
    63007: "sender_not_capable",
}


def delivery_reason(code: int | None) -> str:
    """The failure reason of a message the provider failed with error ``code`` (``undelivered`` when unknown)."""
    return DELIVERY_ERRORS.get(code or 0, "undelivered")


class SmsProvider(Protocol):
    """A provider that can send a message and look one up after an ambiguous failure."""

    name: str

    async def send(self, sms: OutboundSms) -> ProviderReceipt:
        """Send one message.

        Raises:
            SendError: Classified as permanent, retryable or ambiguous.
        """
        ...

    async def find_sent(self, sms: OutboundSms, *, since: float) -> list[ProviderReceipt]:
        """Every message matching ``sms`` (destination, sender, body) created at or after ``since``.

        The caller decides which candidate, if any, is its own (see the dispatcher: a candidate
        already claimed by another outbox row is never taken).

        Args:
            sms: The message that may have been created.
            since: Epoch seconds on the provider's clock; older messages are not candidates.

        Returns:
            The candidates, oldest first (empty when the provider has none).

        Raises:
            SendError: The lookup itself failed (the answer is unknown).
        """
        ...

    async def warm_up(self) -> None:
        """Do slow one-time set-up (clients, imports) before calls start."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
