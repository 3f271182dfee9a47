import pytest

from incall_sms.actions import ActionSet, ContentSpec, SmsAction, load_actions, parse_actions
from incall_sms.errors import ActionConfigError
from incall_sms.pipeline import DEFAULT_ACTIONS


def _one(**fields):
    base = {"name": "a", "condition": "if the caller asks for it", "content": {"template": "Hi"}}
    base.update(fields)
    return {"actions": [base]}


def test_example_file_loads():
    actions = load_actions(DEFAULT_ACTIONS)
    assert [a.name for a in actions.actions] == [
        "booking_confirmation",
        "website_link",
        "clinic_address",
        "meeting_followup",
    ]
    assert actions.get("meeting_followup").content.mode == "preset"


def test_constructible_in_python():
    action = SmsAction(name="link", condition="if the caller wants the link", content=ContentSpec(template="x"))
    assert ActionSet(actions=(action,)).get("link") is action


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"content": {"template": "Hi {nope}"}}, "unknown template variable(s) nope"),
        ({"sender": "pool"}, "pool senders may only send a fixed preset"),
        ({"sender": "pool", "content": {"template": "x", "prompt": "write"}}, "pool senders may only"),
        ({"content": {"preset": "missing"}}, "unknown preset 'missing'"),
        ({"to": "12"}, "actions[0].to: invalid destination"),
        ({"to": "{{customer_phone}}", "variables": {"customer_phone": {}}}, "allow_dynamic_destination"),
        ({"to": "{{x}}", "allow_dynamic_destination": True}, "'x' is not declared"),
        ({"content": {"prompt": "write it"}}, "needs a 'template'"),
        ({"name": "bad name!"}, "actions[0].name"),
        ({"colour": "red"}, "actions[0].colour: Extra inputs"),
        ({"max_segments": 0}, "actions[0].max_segments"),
        ({"content": {"template": "x" * 1601}}, "longer than 1600"),
        ({"media_urls": ["http://example.com/a.png"]}, "https://"),
        ({"confirmation": "Sent to {where}"}, "unknown template variable(s) where"),
    ],
)
def test_invalid_actions_name_the_field(fields, message):
    with pytest.raises(ActionConfigError) as info:
        parse_actions(_one(**fields))
    assert message in str(info.value)


def test_duplicate_names_rejected():
    data = _one()
    data["actions"].append(dict(data["actions"][0]))
    with pytest.raises(ActionConfigError, match="duplicate action name"):
        parse_actions(data)


def test_static_destination_normalized():
    actions = parse_actions(_one(to="(415) 555-2671"))
    dest = actions.destination(actions.actions[0])
    assert dest.kind == "static" and dest.number == "+14155552671"


def test_dynamic_destination_allowed_when_explicit():
    actions = parse_actions(
        _one(to="{{customer_phone}}", allow_dynamic_destination=True, variables={"customer_phone": {}})
    )
    assert actions.destination(actions.actions[0]).variable == "customer_phone"


def test_pool_with_preset_ok():
    data = _one(sender="pool", content={"preset": "p"})
    data["presets"] = {"p": "Your code is ready."}
    assert parse_actions(data).actions[0].sender.value == "pool"


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "a.yaml"
    bad.write_text("actions: [\n  - name: x\n", encoding="utf-8")
    with pytest.raises(ActionConfigError, match="not valid YAML: line 2, column 3"):
        load_actions(bad)
    with pytest.raises(ActionConfigError, match="cannot read"):
        load_actions(tmp_path / "missing.yaml")
    with pytest.raises(ActionConfigError, match="expected a mapping"):
        parse_actions("just text")


def test_failure_lines_by_reason():
    action = parse_actions(_one(failure_reasons={"opted_out": "You opted out."})).actions[0]
    assert action.failure_line("opted_out") == "You opted out."
    assert "mobile" in action.failure_line("not_mobile")
    assert action.failure_line("weird") == action.failure
