"""Framework-independent core of the in-call SMS component.

No pipecat, aiohttp or web-framework imports here (a test enforces it), except in
:mod:`messaging.providers.twilio`, the network edge.
"""

from messaging.actions import ActionSet, SmsAction, load_actions, parse_actions
from messaging.dispatcher import CallContext, Dispatcher, SendOutcome, SendResult
from messaging.errors import (
    ActionConfigError,
    InvalidPhoneNumberError,
    MissingVariableError,
    SendError,
    SendErrorKind,
    SmsError,
)
from messaging.events import SmsEvent, SmsEventKind
from messaging.segments import SegmentInfo, count_segments

__all__ = [
    "ActionConfigError",
    "ActionSet",
    "CallContext",
    "Dispatcher",
    "InvalidPhoneNumberError",
    "MissingVariableError",
    "SegmentInfo",
    "SendError",
    "SendErrorKind",
    "SendOutcome",
    "SendResult",
    "SmsAction",
    "SmsError",
    "SmsEvent",
    "SmsEventKind",
    "count_segments",
    "load_actions",
    "parse_actions",
]
