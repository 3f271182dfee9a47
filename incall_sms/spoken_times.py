"""Clock times said in words, written as digits: "half past four" -> "4:30", "ten past three" -> "3:10".

Callers and agents (and STT) say times in words: "half eight", "a quarter to five", "three o'clock",
"seven pm". The no-key extractor reads times written with digits, so a time in words was either missed
or, worse, an older time said with digits was taken instead ("Monday at 10 has gone, so I've put you in
for half eleven" gave "Monday at 10"). :func:`digits_for_spoken_times` rewrites only the forms that are
clock times whatever the context, and only when what follows fits a time (the end, punctuation, "on",
"tomorrow", "works", ...; not "Five O'Clock Steakhouse", "half two nights"): "half past"/"quarter
past"/"quarter to" an hour, "ten past three", "twenty to eleven" ("five to ten" only after "at": else
a range of hours), British "half eight", "X o'clock", "X am/pm", "at nine in the morning", and an hour
with its minutes only with its part of the day ("nine thirty in the morning", "seven fifteen pm").

Not rewritten, measured: two number words alone ("eleven fifteen"). An outside attack found them read
as prices, rooms, weights, heights, addresses, card expiries and answers to other questions ("one
fifty", "room two twenty", "five ten") in 34 of 70 calls, where the extractor then took them for the
booked time; a bare hour ("at four", "a table for two") is no clock time either. Both stay words, so
the extractor leaves a time it cannot read unset rather than wrong.
"""

from __future__ import annotations

import functools
import re

__all__ = ["digits_for_spoken_times"]

_HOURS = {word: hour for hour, word in enumerate(
    ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"), start=1)}
_HOUR = "(?P<hour>" + "|".join(_HOURS) + ")"
_MINUTES = {"oh five": 5, "o five": 5, "ten": 10, "fifteen": 15, "twenty": 20, "twenty five": 25, "thirty": 30,
            "thirty five": 35, "forty": 40, "forty five": 45, "fifty": 50, "fifty five": 55}
_MINUTE = "(?P<minute>" + "|".join(w.replace(" ", "[ -]") for w in sorted(_MINUTES, key=len, reverse=True)) + ")"
#: Minutes before "past"/"to" ("ten past three", "twenty-five to eleven").
_BEFORE = "(?P<before>five|ten|twenty[ -]five|twenty)"
_BEFORE_MINUTES = {"five": 5, "ten": 10, "twenty": 20, "twenty five": 25}
#: "o'clock" after a time already said ("half past four o'clock": 4:30, not "half past 4:00").
_OCLOCK = r"(?:\s+o'?\s?clock\b)?"
#: Part of the day after the time: "am", "p.m.", "in the evening", "at night".
_PART = (r"(?:\s*(?P<part>a\.?m\.?|p\.?m\.?)(?![a-z])"
         r"|\s+(?P<day_part>in the (?:morning|afternoon|evening)|at night|tonight))?")
#: What may follow a clock time (the end, punctuation, or a word from this list): anything else makes the words
#: something else ("two twenty-pound vouchers", "eleven fifty a month", "twelve thirty maple avenue",
#: "Five O'Clock Steakhouse", "the nine forty train").
_FOLLOWS = (r"(?=\s*(?:$|[.,;:!?)\]\"']"
            r"|(?:on|this(?! morning)|next|tomorrow|today|tonight|then|please|works?|is|it|it's|that|that's|okay|ok|"
            r"sounds?|would|will|should|with|for|and|or|but|so|if|instead|sharp|slot|appointment|booking|in|at|"
            r"suits?|fine|good|great|perfect|lovely|thanks|thank|yes|yeah|alright|sure|"
            r"monday|tuesday|wednesday|thursday|friday|saturday|sunday)\b))")
#: Before an hour said alone with its part of the day ("at nine in the morning"; "one in the morning" is a slot).
_BEFORE_HOUR = r"\b(?P<lead>at|from|around|by|until|till|before|after)\s+"  # not "for two in the evening"
#: The hours a part of the day can have ("two in the evening" is no time: a table for two, in the evening).
_PART_HOURS = {"morning": range(5, 12), "afternoon": (12, 1, 2, 3, 4, 5, 6), "evening": range(5, 12)}

_FORMS: tuple[tuple[re.Pattern[str], int | None], ...] = (
    (re.compile(rf"\b(?:a\s+)?half\s+past\s+{_HOUR}\b{_OCLOCK}{_PART}{_FOLLOWS}", re.IGNORECASE), 30),
    (re.compile(rf"\b(?:a\s+)?quarter\s+past\s+{_HOUR}\b{_OCLOCK}{_PART}{_FOLLOWS}", re.IGNORECASE), 15),
    (re.compile(rf"\b(?:a\s+)?quarter\s+to\s+{_HOUR}\b{_OCLOCK}{_PART}{_FOLLOWS}", re.IGNORECASE), -15),
    (re.compile(rf"\b{_BEFORE}\s+(?P<way>past|after)\s+{_HOUR}\b{_OCLOCK}{_PART}{_FOLLOWS}", re.IGNORECASE), None),
    # "to"/"till": "twenty to eleven"; "five to ten" only after "at" (else it may be a range of hours)
    (re.compile(rf"(?:(?<=\bat )(?P<before>five|ten)|\b(?P<before_>twenty(?:[ -]five)?))\s+(?P<way>to|till)\s+"
                rf"{_HOUR}\b{_OCLOCK}{_PART}{_FOLLOWS}", re.IGNORECASE), None),
    # British "half eight": 8:30
    (re.compile(rf"(?<!\bother )\bhalf\s+{_HOUR}\b{_OCLOCK}{_PART}{_FOLLOWS}", re.IGNORECASE), 30),
    (re.compile(rf"\b{_HOUR}\s+o'?\s?clock\b{_PART}{_FOLLOWS}", re.IGNORECASE), 0),
    # an hour with its minutes only with its part of the day ("nine thirty in the morning", "seven fifteen pm"):
    # bare, two number words are as often a price, a room, a weight or an answer to another question
    (re.compile(rf"\b{_HOUR}[ -]+{_MINUTE}(?![\w-])(?:\s*(?P<part>a\.?m\.?|p\.?m\.?)(?![a-z])"
                rf"|\s+(?P<day_part>in the (?:morning|afternoon|evening))){_FOLLOWS}", re.IGNORECASE), None),
    (re.compile(rf"\b{_HOUR}\s*(?P<part>a\.?m\.?|p\.?m\.?)(?![a-z]){_FOLLOWS}", re.IGNORECASE), 0),
    (re.compile(rf"{_BEFORE_HOUR}{_HOUR}\s+(?P<day_part>in the (?:morning|afternoon|evening)){_FOLLOWS}",
                re.IGNORECASE), 0),
)


#: Words before number words that make them a name or a number, not a time ("flight two fifteen", "room two twenty").
_NUMBERED = frozenset(("flight", "room", "bus", "train", "gate", "platform", "route", "number", "no", "suite", "unit",
                       "apartment", "apt", "highway", "channel", "page", "model", "size", "ref", "reference", "code",
                       "pin", "extension", "ext", "table", "seat", "row", "locker", "order", "ticket", "policy"))


def _written(match: re.Match[str], minutes: int | None) -> str:
    before = match.string[:match.start()].split()
    if before and (before[-1].lower().strip(".,#:") in _NUMBERED
                   or (re.fullmatch(r"[A-Z]{1,3}\d*", before[-1]) and before[-1] not in ("OK", "I", "AM", "PM"))):
        return match.group()  # "BA two fifteen", "room two twenty": a name, as said
    hour = _HOURS[match.group("hour").lower()]
    groups = match.groupdict()
    past = groups.get("before") or groups.get("before_")
    if past:  # "ten past three", "twenty to eleven"
        minutes = _BEFORE_MINUTES[re.sub(r"[ -]+", " ", past.lower())]
        if groups["way"].lower() in ("to", "till"):
            minutes = -minutes
    elif minutes is None:
        minutes = _MINUTES[re.sub(r"[ -]+", " ", match.group("minute").lower())]
    if minutes < 0:  # "quarter to five": 4:45
        hour, minutes = (hour - 2) % 12 + 1, 60 + minutes
    part = (groups.get("part") or "").lower().replace(".", "")
    day_part = (groups.get("day_part") or "").lower()
    if day_part.startswith("in the") and hour not in _PART_HOURS[day_part.rsplit(" ", 1)[1]]:
        return match.group()
    if not part and day_part.endswith("morning"):
        part = "am"
    elif not part and day_part and (not day_part.startswith(("at night", "tonight")) or 6 <= hour <= 11):
        part = "pm"  # "half twelve tonight" and "one at night" are after midnight: no part said
    if hour == 12 and not minutes and day_part.startswith(("at night", "tonight")):
        written = "midnight"
    else:
        clock = f"{hour}:{minutes:02d}" if minutes or not part else str(hour)
        written = f"{clock} {part}" if part else clock
    if day_part == "tonight":
        written += " tonight"  # the day, as said
    lead = groups.get("lead")  # "at" of "at nine in the morning", kept as said
    return f"{lead} {written}" if lead else written


@functools.lru_cache(maxsize=4096)
def digits_for_spoken_times(text: str) -> str:
    """``text`` with clock times said in words written as digits (the rest unchanged).

    Examples: "half past four" -> "4:30", "a quarter to five" -> "4:45", "half eight" -> "8:30",
    "ten past three" -> "3:10", "twenty to eleven" -> "10:40",
    "three o'clock" -> "3:00", "seven pm" -> "7 pm", "nine thirty in the morning" -> "9:30 am".
    Not "a table for two", "at four" or "eleven fifteen" (a count, a price, a room as often as a time).

    Args:
        text: What was said.

    Returns:
        The same text, its spoken clock times in digits.
    """
    for pattern, minutes in _FORMS:
        text = pattern.sub(lambda m, minutes=minutes: _written(m, minutes), text)
    return text
