"""Typed events the dispatcher raises. They carry masked numbers only, never bodies."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

__all__ = ["SmsEvent", "SmsEventKind"]


class SmsEventKind(enum.StrEnum):
    """What happened to an SMS."""

    QUEUED = "queued"
    """Claimed in the outbox; the provider request is about to be made."""
    SENT = "sent"
    """Accepted by the provider (it has a SID). Not yet delivered."""
    DELIVERED = "delivered"
    """The carrier reported delivery (status callback)."""
    FAILED = "failed"
    """Refused, not delivered, or could not be confirmed (see ``reason``)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SmsEvent:
    """One SMS lifecycle event.

    Attributes:
        kind: Queued, sent, delivered or failed.
        key: Outbox idempotency key (call id, action, turn).
        call_id: The call.
        action: Action name.
        to_masked: Destination, masked (``+1******0142``).
        sid: Provider message SID, when known.
        segments: Billed segments, when known.
        encoding: ``GSM-7`` or ``UCS-2``, when known.
        reason: Failure reason (``opted_out``, ``not_mobile``, ``unconfirmed``...).
        error_code: Provider error code, when known.
        retryable: For failures: whether trying again later could succeed.
        at: Event time, epoch seconds.
        delivery_report: Raised by a provider status callback (``DELIVERED``, or ``FAILED``:
            the carrier did not deliver a text the provider had accepted), not by a send.
    """

    kind: SmsEventKind
    key: str
    call_id: str
    action: str
    to_masked: str
    sid: str | None = None
    segments: int | None = None
    encoding: str | None = None
    reason: str | None = None
    error_code: int | None = None
    retryable: bool = False
    at: float = 0.0
    delivery_report: bool = False

    @property
    def to_last2(self) -> str:
        """Last two digits of the destination (for a spoken line), or ``""``."""
        return self.to_masked[-2:] if self.to_masked else ""

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready values (to route it to another worker)."""
        data = dataclasses.asdict(self)
        data["kind"] = self.kind.value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SmsEvent:
        """Rebuild an event from :meth:`to_dict` output.

        Fields this version does not know (sent by a newer worker) are left out.

        Raises:
            ValueError: Unknown kind.
            TypeError: Missing fields.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        fields = {key: value for key, value in data.items() if key in known}  # a newer worker's fields
        fields["kind"] = SmsEventKind(fields["kind"])
        return cls(**fields)
