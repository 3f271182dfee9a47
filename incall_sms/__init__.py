"""Framework-independent core of the in-call SMS component.

No pipecat, aiohttp or web-framework imports here (a test enforces it), except in
:mod:`incall_sms.providers.twilio`, the network edge.
"""

from incall_sms.actions import ActionSet, SmsAction, load_actions, parse_actions
from incall_sms.dispatcher import CallContext, Dispatcher, SendOutcome, SendResult
from incall_sms.errors import (
    ActionConfigError,
    InvalidPhoneNumberError,
    MissingVariableError,
    SendError,
    SendErrorKind,
    SmsError,
)
from incall_sms.events import SmsEvent, SmsEventKind
from incall_sms.segments import SegmentInfo, count_segments

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
