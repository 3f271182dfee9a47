"""Clock times said in words are read as digits; counts, prices and durations stay words."""

import pytest

from incall_sms.judges.base import Turn
from incall_sms.pattern_extractor import PatternExtractor
from incall_sms.spoken_times import digits_for_spoken_times

BOOKING = {"booking_time": "date and time of the booking"}


@pytest.mark.parametrize(("said", "written"), [
    ("I can do half past four instead", "I can do 4:30 instead"),
    ("a quarter to five tomorrow", "4:45 tomorrow"),
    ("quarter to one", "12:45"),
    ("Quarter past Twelve then", "12:15 then"),
    ("we've a table at half eight", "we've a table at 8:30"),
    ("someone's taken the four o'clock", "someone's taken the 4:00"),
    ("three o'clock in the afternoon", "3 pm"),
    ("seven fifteen pm on Friday", "7:15 pm on Friday"),
    ("ten past three", "3:10"),
    ("twenty-five to eleven in the morning", "10:35 am"),
    ("five past six in the evening", "6:05 pm"),
    ("twenty to one", "12:40"),
    ("see you at ten to twelve", "see you at 11:50"),
    ("seven pm on Friday", "7 pm on Friday"),
    ("seven p.m. on Friday", "7 pm on Friday"),
    ("nine thirty in the morning", "9:30 am"),
    ("at nine in the evening", "at 9 pm"),
    ("twelve o'clock at night", "midnight"),
    ("half past four o'clock on Friday", "4:30 on Friday"),
    ("a quarter to five o'clock", "4:45"),
    ("half eight tonight", "8:30 pm tonight"),
    ("half twelve tonight", "12:30 tonight"),  # after midnight: no pm
])
def test_clock_times_in_words_are_written_as_digits(said, written):
    assert digits_for_spoken_times(said) == written


@pytest.mark.parametrize("said", [
    "a table for two please",
    "two of us, at four",
    "it takes half an hour",
    "about twenty minutes, maybe ten fifteen minutes",
    "that's seven fifty dollars",
    "for two twenty people? no, twelve",
    "one moment please",
    "it's half one of those things I guess",
    "I'll be there at seven",  # a bare hour: could be a count, left alone
    "the nine tenants upstairs",
    "seven amazing dishes",
    "booked in for eleven fifteen",  # two number words alone: as often a price ("for one fifty") as a time
    "the one twenty please",
    "yeah two twenty",
    "it's eleven fifty a month",  # a price
    "room two twenty",
    "we're on flight BA two fifteen on Friday",
    "he's about five ten",  # a height
    "two thirty-minute massages",
    "ten fifteen-year-olds",
    "the nine forty train",
    "all set at twelve thirty maple avenue",
    "Five O'Clock Steakhouse",
    "dinner for two in the evening on friday",  # a party size
    "at two in the evening",  # no hour of the evening
    "ten to twenty minutes",  # a duration: "twenty" is no hour
    "we're open five to ten most days",  # a range of hours: no minutes said
    "ten till three",  # 2:50, or from ten until three: left alone without "at"
])
def test_counts_prices_durations_and_bare_hours_stay_as_said(said):
    assert digits_for_spoken_times(said) == said


@pytest.mark.parametrize(("transcript", "expected"), [
    ([("user", "can i book the mot for monday at 10"),
      ("agent", "Monday at 10 am, one moment. What's the registration?"),
      ("user", "it's l d 19 x y z"),
      ("agent", "Thanks. Monday at 10 has gone now, so I've put you in for half eleven instead.")], "11:30"),
    ([("user", "hi i'd like to book a table for two tonight at 8"),
      ("agent", "Tonight at 8 pm has just gone, I'm afraid, but we've a table at half eight. What name?"),
      ("user", "half eight's fine, it's morgan"),
      ("agent", "Perfect, you're booked in, Morgan.")], "8:30"),
    ([("user", "could you book me a table for two on saturday"),
      ("agent", "Saturday works. I've booked you in for seven thirty in the evening.")], "7:30 pm"),
])
def test_the_extractor_reads_the_booked_time_said_in_words(transcript, expected):
    got = PatternExtractor().extract_now([Turn(role, text) for role, text in transcript], BOOKING)
    assert expected in got.get("booking_time", "")
    assert "10" not in got["booking_time"] and " 8 " not in f" {got['booking_time']} "


def test_a_range_that_starts_at_ten_or_later_is_not_read_as_its_end():
    turns = [Turn("user", "can i have the meeting room thursday morning"),
             Turn("agent", "I've reserved the room for you from 10 to 11 am on Thursday.")]
    assert "11 am" not in PatternExtractor().extract_now(turns, BOOKING).get("booking_time", "")
