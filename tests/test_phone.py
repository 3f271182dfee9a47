import pytest
from hypothesis import given
from hypothesis import strategies as st

from incall_sms.errors import InvalidPhoneNumberError
from incall_sms.phone import is_e164, last_digits, mask, normalize_e164


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+1 (415) 555-2671", "+14155552671"),
        ("415.555.2671", "+14155552671"),
        ("  +44 20 7946 0958 ", "+442079460958"),
        ("+4915123456789", "+4915123456789"),
    ],
)
def test_normalizes_to_e164(raw, expected):
    assert normalize_e164(raw) == expected


@pytest.mark.parametrize(
    "raw", ["", "   ", "12", "+1555", "call me", "+1 415 555 2671 ext 5", "415555\x002671", "x" * 100]
)
def test_rejects_bad_numbers(raw):
    with pytest.raises(InvalidPhoneNumberError) as info:
        normalize_e164(raw)
    assert raw.strip() not in str(info.value) or not raw.strip()


def test_requires_country_code_without_region():
    with pytest.raises(InvalidPhoneNumberError):
        normalize_e164("4155552671", default_region=None)


def test_mask_keeps_country_and_last_four():
    assert mask("+14155552671") == "+1******2671"
    assert mask("+442079460958") == "+44******0958"
    assert mask(None) == "<none>"
    assert "5552" not in mask("+14155552671")


def test_last_digits_and_is_e164():
    assert last_digits("+14155552671") == "71"
    assert is_e164("+14155552671")
    assert not is_e164("4155552671")


@given(st.text(max_size=80))
def test_never_crashes_with_anything_but_invalid_number(text):
    try:
        out = normalize_e164(text)
    except InvalidPhoneNumberError:
        return
    assert out.startswith("+") and out[1:].isdigit()


def test_a_cached_refusal_still_names_each_field_and_premium_rules_stay_per_call():
    # parsing is cached (every send parses the same few numbers): errors and options must not leak between calls
    for field in ("to", "from", "to"):
        with pytest.raises(InvalidPhoneNumberError) as info:
            normalize_e164("+1555", field=field)
        assert field in str(info.value)
    premium = "+19005550123"
    with pytest.raises(InvalidPhoneNumberError):
        normalize_e164(premium)
    assert normalize_e164(premium, allow_premium=True) == premium
    with pytest.raises(InvalidPhoneNumberError):
        normalize_e164(premium)
    assert normalize_e164("4155552671") == "+14155552671"
    with pytest.raises(InvalidPhoneNumberError):
        normalize_e164("4155552671", default_region=None)
