import pytest
from hypothesis import given
from hypothesis import strategies as st

from incall_sms.errors import MissingVariableError
from incall_sms.templates import MAX_VALUE_CHARS, Template


def test_both_placeholder_styles():
    t = Template("Hi {caller_name}, see you {{ booking_time }} ({{caller_name}})")
    assert t.variables == ("caller_name", "booking_time")
    assert t.render({"caller_name": "Sam", "booking_time": "Tue 3pm"}) == "Hi Sam, see you Tue 3pm (Sam)"


def test_other_braces_are_literal():
    t = Template('json {"a": 1} and { x } and {1abc}')
    assert t.variables == ()
    assert t.render({}) == 'json {"a": 1} and { x } and {1abc}'


def test_missing_variable_never_renders_literal():
    with pytest.raises(MissingVariableError) as info:
        Template("Hi {caller_name} at {{time}}").render({"caller_name": ""})
    assert info.value.names == ["caller_name", "time"]


def test_defaults_fill_missing():
    assert Template("Hi {name}").render({}, defaults={"name": "there"}) == "Hi there"


def test_values_are_cleaned():
    out = Template("Hi {name}!").render({"name": "Sam\x00\u202e\n  Smith" + "x" * 1000})
    assert "\x00" not in out and "\u202e" not in out and "\n" not in out
    assert len(out) <= len("Hi !") + MAX_VALUE_CHARS


def test_unknown_variables():
    assert Template("{a} {{b}} {c}").unknown_variables({"a"}) == ["b", "c"]


@given(
    st.dictionaries(
        st.from_regex(r"[a-z_]{1,8}", fullmatch=True),
        st.text(alphabet="abcXYZ 12", min_size=1, max_size=50).filter(str.strip),
    )
)
def test_rendered_output_has_no_placeholder_left(values):
    source = " ".join("{" + k + "}" for k in values) or "static"
    out = Template(source).render(values)
    for key in values:
        assert "{" + key + "}" not in out


def test_lint_says_a_default_is_unused_under_skip():
    # found by a new user: with on_missing_variable: skip a declared default is never used, and lint said "ok"
    from incall_sms.lint import lint_data

    [row] = lint_data({"actions": [
        {"name": "confirm", "condition": "when the call ends and a visit was booked", "when": "call_end",
         "on_missing_variable": "skip", "content": {"template": "Hi {caller_name}, see you {booking_time}."},
         "variables": {"caller_name": {"default": "there"}, "booking_time": {"example": "Friday at 7 pm"}}}]})
    assert any("'caller_name': its default is not used" in w for w in row.warnings), row.warnings
    assert not any("booking_time" in w for w in row.warnings)
