"""One list of people for every rule: a person word known to one rule is known to all of them."""

import pytest

from incall_sms import lexicon
from incall_sms.judges.base import ConditionSpec, JudgeRequest, Turn
from incall_sms.judges.embedded import EmbeddedJudge
from incall_sms.judges.recipients import veto_reason
from incall_sms.replies import classify_yes_no

# words that were missing from at least one of the rules' own lists before they shared this one
NEWLY_SHARED = ["grandma", "roommate", "babysitter", "tutor", "nephew"]


def test_the_lists_are_lower_case_and_alternation_prefers_the_longest_form():
    assert all(w == w.lower() for w in lexicon.PEOPLE)
    assert lexicon.PEOPLE_EN <= lexicon.PEOPLE and {"hija", "tochter"} <= lexicon.PEOPLE
    import re
    assert re.fullmatch(lexicon.alternation(["kid", "kids"]), "kids")


@pytest.mark.parametrize("person", NEWLY_SHARED)
def test_a_yes_redirected_to_a_person_is_no_clear_yes(person):
    assert classify_yes_no("yes please") == "yes"
    assert classify_yes_no("yes to my wife please") is None
    assert classify_yes_no(f"yes to my {person} please") is None


@pytest.mark.parametrize("person", NEWLY_SHARED)
def test_recipients_rule_knows_the_person(person):
    reason = veto_reason("if the caller wants the schedule texted to them", f"please text the schedule to my {person}")
    assert reason and "someone else" in reason


@pytest.mark.parametrize("person", NEWLY_SHARED)
def test_embedded_judge_reads_every_person_like_a_wife(person):
    spec = ConditionSpec(id="hours", condition="if the caller wants the opening hours texted")
    judge = EmbeddedJudge()

    def fired(turn):
        return [m.id for m in judge.judge_now(JudgeRequest(conditions=[spec], transcript=[Turn("user", turn)]))]

    assert fired("can you text me the opening hours") == ["hours"]
    assert fired(f"text the opening hours for my {person}") == fired("text the opening hours for my wife") == []


@pytest.mark.parametrize("answer", ["yes please, that is very kind of you", "sure, thanks team",
                                    "yes, my doctor asked me to"])
def test_a_plain_yes_mentioning_a_person_word_is_still_a_yes(answer):
    assert classify_yes_no(answer) == "yes"
