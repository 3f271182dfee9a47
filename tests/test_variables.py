"""The no-key variable extractor (`PatternExtractor`): values come from where they are stated, not other words.

Written before the fix (issue 11: "a time word in a request for a different text becomes the booking time").
"""

import pathlib

import pytest

from incall_sms.judges.base import Turn
from incall_sms.variables import PatternExtractor

DATA = pathlib.Path(__file__).parent / "data" / "extract"
BOOKING = {"booking_time": "date and time of the booking"}
NAME = {"caller_name": "the caller's first name"}


def a(text):
    return Turn("agent", text)


def u(text):
    return Turn("user", text)


def extract(turns, wanted=BOOKING):
    return PatternExtractor().extract_now(turns, wanted)


@pytest.mark.parametrize(("turns", "expected"), [
    # the agent's confirmation states it
    ([u("a table for four on friday please"), a("Your table for four is booked for Friday at 7 pm.")],
     "Friday at 7 pm"),
    # a time word in the caller's request for another text is not the booking time
    ([a("Your table is booked for Friday at 7 pm."), u("great and can you text me the parking info for tomorrow")],
     "Friday at 7 pm"),
    ([a("You're all set for Tuesday at 3 pm."), u("thanks, can you also send me the hours for saturday")],
     "Tuesday at 3 pm"),
    # a rebooking: the latest settled time wins
    ([a("Booked for Friday at 7 pm."), u("actually can we do saturday at 8 instead"),
      a("Sure, I've moved your booking to Saturday at 8 pm.")], "Saturday at 8 pm"),
    # a confirmation without a time confirms the time the caller just asked for
    ([a("I have Friday at 6 or Saturday at 8. Which one?"), u("saturday at 8 please"), a("Done, you're booked.")],
     "Saturday at 8"),
    ([a("I have Tuesday at 10 am or Tuesday at 2 pm."), u("the later one"), a("Perfect, I'll get that booked.")],
     "Tuesday at 2 pm"),
    # a proposal the caller took, with no confirmation after it (yet)
    ([u("hi we'd like to see the venue"), a("Our coordinator can meet you Saturday at 11 am."), u("that works for us")],
     "Saturday at 11 am"),
    # a statement after the confirmation in the same turn
    ([a("Your visit is scheduled for Monday at 10 am. Is there anything else I can help with?"),
      u("no that's all")], "Monday at 10 am"),
    # a time with am/pm and no day
    ([a("Great, you're booked for 7:30 pm tonight.")], "7:30 pm tonight"),
])
def test_booking_time_comes_from_where_the_booking_is_settled(turns, expected):
    assert extract(turns) == {"booking_time": expected}


@pytest.mark.parametrize("turns", [
    # class times and opening hours: "bookings" named, nothing booked
    [u("what times do your classes run"), a("Classes run on Saturdays from 10 to 1, and we take bookings Monday "
                                            "to Friday 9 to 5."), u("ok i'll ring back tomorrow")],
    # a proposal the caller turned down
    [a("We can do Thursday at 10 am."), u("no thursday doesn't work for me")],
    # offers and questions settle nothing
    [u("do you have anything this weekend"), a("I have Friday at 6 or Saturday at 8. Which one works?")],
    [a("Shall I book you for Thursday at 5 pm?")],
    # only the caller mentioned a time, for something else
    [u("i'm free tomorrow, but can you text me your menu")],
    [a("Our hours are on the website."), u("can you text me the directions, i'm coming monday")],
    # the booking was cancelled afterwards
    [a("You're booked for Friday at 7 pm."), u("actually please cancel it"), a("Okay, I've cancelled your booking.")],
])
def test_no_booking_time_when_none_was_settled(turns):
    assert extract(turns) == {}


def test_the_caller_stating_the_booking_counts_when_no_agent_turn_is_known():
    # e.g. a recording or a bot that does not feed the agent's words back: the caller's own booking request
    assert extract([u("hi, please book me a table for friday at 7 pm")]) == {"booking_time": "friday at 7 pm"}


@pytest.mark.parametrize(("text", "expected"), [
    ("Hi, this is Dana Smith.", "Dana Smith"),
    ("Hello, my name is Ana.", "Ana"),
    ("Hi, it's Marcus, I booked yesterday.", "Marcus"),
    ("I'm Dana, calling about my order.", "Dana"),
    ("Hi, I am Priya Patel.", "Priya Patel"),
    ("It's Omar here.", "Omar"),
])
def test_names(text, expected):
    assert extract([u(text)], NAME) == {"caller_name": expected}


def test_someone_elses_name_is_not_the_callers():
    turns = [u("hi this is for my mother"), a("What's her name, and yours?"), u("her name's linda and i'm tom"),
             a("Thanks, Tom.")]
    assert extract(turns, NAME) == {"caller_name": "tom"}


@pytest.mark.parametrize("text", [
    "It's Friday, right?", "This is Great, thanks.", "I'm Sorry, what was that?", "It's Tuesday at 3 pm I think.",
    "I'm Calling about my booking.", "I'm Not sure.", "It's March already?",
])
def test_words_after_its_or_im_that_are_not_names(text):
    assert extract([u(text)], NAME) == {}


def test_other_descriptions_still_read_the_callers_words():
    wanted = {"callback_time": "when the caller wants to be called back"}
    turns = [u("could someone call me back tomorrow at 3 pm"), a("Sure, someone will call you back then.")]
    assert extract(turns, wanted) == {"callback_time": "tomorrow at 3 pm"}


@pytest.mark.parametrize(("turns", "expected"), [
    ([u("my email is dana@example.com")], {"email": "dana@example.com"}),
    ([u("it's dana at example dot com"), a("Thanks, I have your email as dana@example.com.")],
     {"email": "dana@example.com"}),
    # the business's own address is not the caller's
    ([u("how do i reach you"), a("You can email us at info@clinic.example or call 415 555 0100.")], {}),
])
def test_contact_details_are_the_callers(turns, expected):
    assert extract(turns, {"email": "the caller's e-mail address"}) == expected


def test_a_promotion_with_a_time_is_no_booking():
    turns = [u("do you have specials"), a("Our happy hour is on Friday at 5 pm, and your table can be ready by 6.")]
    assert extract(turns) == {}
    assert extract([a("Your appointment is on Monday at 10 am.")]) == {"booking_time": "Monday at 10 am"}


@pytest.mark.parametrize("turns", [
    # our own confirmation line after a request for another text is no booking
    [u("can you text me the directions for tomorrow"), a("Done, I've texted it to your number ending in 71.")],
    # a note about the caller's booking (the simulation's agent after an inbound text) settles no time
    [u("we arrive at 6 pm with a high chair"), a("Thanks, I got your text and I've added it to your booking notes.")],
    # a confirmation of something the caller did not choose a time for
    [u("can you send me the menu for friday"), a("You're all set.")],
])
def test_no_time_from_a_confirmation_of_something_else(turns):
    assert extract(turns) == {}


def test_a_confirmation_after_the_callers_booking_request():
    turns = [u("can you book me in for thursday at 4"), a("You're booked, see you then.")]
    assert extract(turns) == {"booking_time": "thursday at 4"}


def _score(path):
    """Right / wrong / missed values of a labelled file, as ``scripts/score_extraction.py`` counts them."""
    import importlib.util

    script = DATA.parents[2] / "scripts" / "score_extraction.py"
    spec = importlib.util.spec_from_file_location("score_extraction", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    counts = module.score(path)
    return counts["right"], counts["wrong"], counts["missed"]


@pytest.mark.parametrize(("name", "most_wrong", "most_missed"), [
    ("dev.jsonl", 0, 3), ("second.jsonl", 0, 0), ("third.jsonl", 0, 6), ("attack.jsonl", 0, 25),
    ("attack2.jsonl", 2, 13), ("fourth.jsonl", 0, 7), ("others.jsonl", 0, 22),
    ("others2.jsonl", 1, 19), ("attack3.jsonl", 1, 8), ("attack4.jsonl", 22, 13)])
def test_labelled_conversations(name, most_wrong, most_missed):
    # Conversations written by helpers who had not seen the extractor; the extractor was then fixed by class on
    # them, so all are development sets now (first looks: dev 49 right / 20 wrong / 13 missed before the
    # rework; second, written after it: 44/13/13 with the old extractor, 56/1/13 with the rework at first sight;
    # third: 38/3/19 old, 48/2/10 at first sight; fourth, ordinary calls written after both attacks: 44/3/21 old,
    # 58/2/8 at first sight). attack.jsonl (97) and attack2.jsonl (90): conversations
    # attackers (helpers reading the code) wrote to make it fail: 82 and 77 wrong values at first. The misses
    # left are the price of refusing what cannot be read for sure (a wrong time texted is worse than none).
    # attack2's two "wrong" are label calls we do not share: b2-24 'tonight' for a walk-in seated tonight and
    # b2-29 'saturday' for a Saturday booking whose hour was left open (the helper wanted no value).
    # others.jsonl (60, blind, stop 27): bookings made for someone else vs other people's existing bookings:
    # 33/3/24 with the extractor before; fixed by class on it. others2.jsonl (50, blind, written meanwhile):
    # 26/5/19 before, 32/5/13 at first sight of the fix (two of the five "wrong" were right values in another
    # word order, which the scorer now accepts). attack3.jsonl (40, an attacker reading that fix): 0/40/0 when
    # written (11 were wrong before the fix too): a bare "Done."/"that's in" confirms anything (a note, a
    # receipt), "Jen's in at 10" is a shift, an echoed time the caller then moves. Those readings were taken
    # out; what stays: the agent taking up the caller's time before a name ("Friday at 4 pm works. Name?"),
    # bookings for "my son" read in the part that books them, no value when the caller only asked about a
    # booking that exists (a checking cue and an existing booking, no request to book), several at once.
    # attack4.jsonl (40, a second attacker on that): 0/40/0 when written (23 wrong with the extractor before
    # this stop): a time the agent or caller then names in words ("Nine it is", "three thirty", "right after
    # at five") was ignored and the earlier one kept; "fully booked" taken as an echo; a voicemail's "can we
    # do". Now: a time in words we cannot read since the echo, or in the confirming turn, leaves no value.
    # Same scorer, extractor before this stop -> now: others 33/3/24 -> 38/0/22, others2 27/4/19 -> 30/1/19,
    # attack3 21/11/8 -> 31/1/8, attack4 5/23/12 -> 5/22/13 (its 22: older holes, mostly checks of existing
    # bookings worded without an owner's noun and several bookings in separate sentences); the six older
    # sets unchanged. Left wrong: others2 h-032 ("Tilly has a stitch removal booked for the 12th at 11", a check
    # of a booking named "the stitches appointment"), attack3 x-008 ("Sure, that's done" for a receipt for the
    # session on the 3rd; wrong before too).
    right, wrong, missed = _score(DATA / name)
    assert wrong <= most_wrong and missed <= most_missed, (right, wrong, missed)


@pytest.mark.parametrize(("turns", "expected"), [
    ([a("So that's Friday at 9 am for the cleaning."), u("can you text me a summary")],
     {"booking_time": "Friday at 9 am"}),
    ([a("That's our happy hour, Friday at 5 pm."), u("nice")], {}),
])
def test_the_agent_summing_up_settles_it(turns, expected):
    assert extract(turns) == expected


@pytest.mark.parametrize(("turns", "expected"), [
    # the agent takes up the caller's time, asks a name, then confirms without repeating the time
    ([u("could i book a haircut for thursday at 11"), a("Thursday at 11 am is fine. And your name?"), u("sam"),
      a("Perfect, you're booked.")], {"booking_time": "Thursday at 11 am"}),
    # a bare "Done" may confirm anything (a note, a receipt): not a time
    ([u("could i book a haircut for thursday at 11"), a("Thursday at 11 am is fine. And your name?"), u("sam"),
      a("Done!")], {}),
    # the caller moves the time after the agent took it up
    ([u("could i book a haircut for thursday at 11"), a("Thursday at 11 am is fine. And your name?"),
      u("sam, actually could we make it half an hour later"), a("You're booked.")], {}),
    # ...but not a time the agent offers instead
    ([u("could i book a haircut for thursday at 11"), a("We have Thursday at 12 instead. Your name?"), u("sam"),
      a("Done!")], {}),
    # booking for someone else is still the caller's booking
    ([u("can you fit my dad in on monday at 10 for his bloods"), a("Sure, he's booked.")],
     {"booking_time": "monday at 10"}),
    ([u("i'd like a lesson for my niece, sunday at 2"), a("Great, Maya is booked for Sunday at 2 pm.")],
     {"booking_time": "Sunday at 2 pm"}),
    # a clock time in words since the echo is read as one ("half six" is 6:30, as "6:30" would be)...
    ([u("could i book a massage for wednesday at 5"), a("Wednesday at 5 pm is free. Your name?"),
      u("lee, or could it be half six"), a("Sure, you're booked.")], {"booking_time": "6:30"}),
    # ...a bare hour word in the confirmation is one we cannot read (a count?): no value, never the old time
    ([u("could i book a massage for wednesday at 5"), a("Wednesday at 5 pm is free. Your name?"), u("lee"),
      a("Seven it is then, Lee, you're booked.")], {}),
    # "fully booked" is no echo
    ([u("could i book a massage for wednesday at 5"), a("Wednesday at 5 pm is fully booked. Name for the list?"),
      u("lee"), a("You're on the list.")], {}),
    # "Jen's in at 10" is when someone works, not a booking
    ([u("can i see jen for a cut"), a("Jen's in at 10 tomorrow.")], {}),
    # an existing booking checked, not made
    ([u("hi, can you check when my wife's scan is? i think tuesday at 3"), a("Rosa Diaz is booked for Tuesday at "
      "3:20 pm.")], {}),
    ([u("is my mum's appointment still on for monday at 9?"), a("Yes, she's still booked for Monday at 9 am.")], {}),
    # two bookings at once: which one a text means is unclear
    ([u("can both my boys come in saturday, one at 10 and one at 11"), a("Both booked: 10 and 11 on Saturday.")],
     {}),
    ([u("can you fit my two in on friday"), a("I've booked Ada at 2 pm and Lev at 3 pm on Friday.")], {}),
    # "done" inside a sentence confirms nothing
    ([u("can i book for friday at 4"), a("Have you done a session with us before?")], {}),
])
def test_terse_confirmations_and_bookings_for_others(turns, expected):
    assert extract(turns) == expected
