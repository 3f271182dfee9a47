"""Clock times said in words, written as digits: "half past four" -> "4:30", "eleven fifteen" -> "11:15".

Callers and agents (and STT) say times in words: "half eight", "a quarter to five", "three o'clock",
"nine thirty", "seven pm". The no-key extractor reads times written with digits, so a time in words
was either missed or, worse, an older time said with digits was taken instead ("Monday at 10 has
gone, so I've put you in for half eleven" gave "Monday at 10"). :func:`digits_for_spoken_times`
rewrites only the forms that are clock times whatever the context: an hour word with minutes
("eleven fifteen", "ten past three", "twenty to eleven"), "o'clock", "am"/"pm" or "in the
morning/afternoon/evening", or after "half"/"quarter". A bare number word stays as it is ("a table
for two", "at four" could be a count): it is no clock time alone; nor is "five to ten" without "at"
(a range of hours?).
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
#: Part of the day after the time: "am", "p.m.", "in the evening", "at night".
_PART = (r"(?:\s*(?P<part>a\.?m\.?|p\.?m\.?)(?![a-z])"
         r"|\s+(?P<day_part>in the (?:morning|afternoon|evening)|at night|tonight))?")
#: Not a time after it: "nine fifteen minutes", "seven fifty dollars", "two twenty people".
_NOT_AFTER = (r"(?!\s*(?:minutes?|mins?|hours?|people|persons|guests|years?|kids|children|adults|dollars?|bucks|"
              r"pounds?|quid|euros?|cents?|pence|percent|%|miles?|of\b))")

_FORMS: tuple[tuple[re.Pattern[str], int | None], ...] = (
    (re.compile(rf"\b(?:a\s+)?half\s+past\s+{_HOUR}\b{_PART}", re.IGNORECASE), 30),
    (re.compile(rf"\b(?:a\s+)?quarter\s+past\s+{_HOUR}\b{_PART}", re.IGNORECASE), 15),
    (re.compile(rf"\b(?:a\s+)?quarter\s+to\s+{_HOUR}\b{_PART}", re.IGNORECASE), -15),
    (re.compile(rf"\b{_BEFORE}\s+(?P<way>past|after)\s+{_HOUR}\b{_PART}", re.IGNORECASE), None),
    # "to"/"till": "twenty to eleven"; "five to ten" only after "at" (else it may be a range of hours)
    (re.compile(rf"(?:(?<=\bat )(?P<before>five|ten)|\b(?P<before_>twenty(?:[ -]five)?))\s+(?P<way>to|till)\s+"
                rf"{_HOUR}\b{_PART}", re.IGNORECASE), None),
    (re.compile(rf"\bhalf\s+{_HOUR}\b{_NOT_AFTER}{_PART}", re.IGNORECASE), 30),  # British "half eight": 8:30
    (re.compile(rf"\b{_HOUR}\s+o'?\s?clock\b{_PART}", re.IGNORECASE), 0),
    (re.compile(rf"\b{_HOUR}[ -]+{_MINUTE}\b{_NOT_AFTER}{_PART}", re.IGNORECASE), None),  # minutes as said
    (re.compile(rf"\b{_HOUR}(?=\s*(?:a\.?m\.?|p\.?m\.?)(?![a-z])"
                rf"|\s+(?:in the (?:morning|afternoon|evening)|at night)\b){_PART}", re.IGNORECASE), 0),
)


def _written(match: re.Match[str], minutes: int | None) -> str:
    hour = _HOURS[match.group("hour").lower()]
    groups = match.groupdict()
    before = groups.get("before") or groups.get("before_")
    if before:  # "ten past three", "twenty to eleven"
        minutes = _BEFORE_MINUTES[re.sub(r"[ -]+", " ", before.lower())]
        if groups["way"].lower() in ("to", "till"):
            minutes = -minutes
    elif minutes is None:
        minutes = _MINUTES[re.sub(r"[ -]+", " ", match.group("minute").lower())]
    if minutes < 0:  # "quarter to five": 4:45
        hour, minutes = (hour - 2) % 12 + 1, 60 + minutes
    part = (match.group("part") or "").lower().replace(".", "")
    day_part = (match.group("day_part") or "").lower()
    if not part and day_part:
        part = "am" if day_part.endswith("morning") else "pm"
    clock = f"{hour}:{minutes:02d}" if minutes or not part else str(hour)
    return f"{clock} {part}" if part else clock


@functools.lru_cache(maxsize=4096)
def digits_for_spoken_times(text: str) -> str:
    """``text`` with clock times said in words written as digits (the rest unchanged).

    Examples: "half past four" -> "4:30", "a quarter to five" -> "4:45", "half eight" -> "8:30",
    "ten past three" -> "3:10", "twenty to eleven" -> "10:40",
    "three o'clock" -> "3:00", "eleven fifteen" -> "11:15", "seven pm" -> "7 pm",
    "nine thirty in the morning" -> "9:30 am". Not "a table for two" or "at four" (no clock time alone).

    Args:
        text: What was said.

    Returns:
        The same text, its spoken clock times in digits.
    """
    for pattern, minutes in _FORMS:
        text = pattern.sub(lambda m, minutes=minutes: _written(m, minutes), text)
    return text
