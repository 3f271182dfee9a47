"""Phone numbers: parsing to E.164 and masking for logs."""

from __future__ import annotations

import functools

import phonenumbers

from incall_sms.errors import InvalidPhoneNumberError

__all__ = ["is_e164", "last_digits", "mask", "normalize_e164"]

_MAX_RAW_LENGTH = 64


_PREMIUM_TYPES = frozenset({phonenumbers.PhoneNumberType.PREMIUM_RATE, phonenumbers.PhoneNumberType.SHARED_COST})


def normalize_e164(
    raw: str, *, default_region: str | None = "US", field: str | None = None, allow_premium: bool = False
) -> str:
    """Parse a phone number and return it in E.164 form (``+14155550100``).

    Args:
        raw: The number as given (``(415) 555-0100``, ``+44 20 7946 0958`` ...).
        default_region: ISO region used when ``raw`` has no ``+`` country code;
            ``None`` requires an international number.
        field: Name of the field being parsed, used in the error message.
        allow_premium: Accept premium-rate and shared-cost numbers (refused by default:
            a caller must never be able to make the agent text a paid number).

    Returns:
        The E.164 string.

    Raises:
        InvalidPhoneNumberError: ``raw`` is not a string, is empty or too long,
            contains control characters, cannot be parsed, is not a valid number, or
            is a premium-rate number.
    """
    if not isinstance(raw, str):
        raise InvalidPhoneNumberError("not a string", field=field)
    text = raw.strip()
    if not text:
        raise InvalidPhoneNumberError("empty", field=field)
    if len(text) > _MAX_RAW_LENGTH:
        raise InvalidPhoneNumberError("too long", field=field)
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise InvalidPhoneNumberError("control characters", field=field)
    number, problem = _parse(text, default_region, allow_premium)
    if problem is not None:
        raise InvalidPhoneNumberError(problem, field=field)
    return number


@functools.lru_cache(maxsize=4096)
def _parse(text: str, default_region: str | None, allow_premium: bool) -> tuple[str, str | None]:
    """``(E.164, None)`` or ``("", why not)``; cached: every send parses the same few numbers (~0.1 ms each)."""
    try:
        parsed = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException:
        return "", "unparseable"
    if parsed.extension:
        return "", "extensions cannot receive SMS"
    if not phonenumbers.is_valid_number(parsed):
        return "", "not a valid number"
    if not allow_premium and phonenumbers.number_type(parsed) in _PREMIUM_TYPES:
        return "", "premium-rate numbers are refused"
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164), None


def is_e164(value: str) -> bool:
    """Return whether ``value`` is already a valid number in canonical E.164 form."""
    try:
        return normalize_e164(value, default_region=None) == value
    except InvalidPhoneNumberError:
        return False


def mask(number: str | None) -> str:
    """Mask a phone number for logs and events: ``+14155550142`` -> ``+1******0142``.

    Args:
        number: Any string; ``None`` gives ``"<none>"``.

    Returns:
        The country code (when the number is valid E.164) and the last four digits.
    """
    if not number:
        return "<none>"
    digits = "".join(ch for ch in number if ch.isdigit())
    if len(digits) <= 4:
        return "*" * len(digits)
    prefix = ""
    if number.startswith("+"):
        prefix = _country_prefix(number)
    hidden = len(digits) - 4 - max(len(prefix) - 1, 0)
    return f"{prefix}{'*' * max(hidden, 2)}{digits[-4:]}"


@functools.lru_cache(maxsize=4096)
def _country_prefix(number: str) -> str:
    try:
        return f"+{phonenumbers.parse(number, None).country_code}"
    except phonenumbers.NumberParseException:
        return "+"


def last_digits(number: str, count: int = 2) -> str:
    """Return the last ``count`` digits of ``number`` (for spoken confirmations)."""
    digits = "".join(ch for ch in number if ch.isdigit())
    return digits[-count:]
