"""How the no-key variable extractor does on labelled conversations: right, wrong and missed values per file.

A wrong value is a text with a wrong time, name or address; a missed one only waits or falls back to a default.
Each line of a file: ``{"wanted": {name: description}, "transcript": [{"role", "text"}], "expected": {name: value}}``
(a variable left out of ``expected`` has no correct value yet). A value counts as right when it is the expected
one, or holds it or is held by it as whole words ("Saturday at 10 AM" / "saturday at 10"), case ignored
("7 30" as said equals "7:30").

Usage: python scripts/score_extraction.py [-v] [FILE.jsonl ...]   (default: every file in tests/data/extract/)
Prints one JSON line per file, then the total; exit 1 when any value is wrong.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from incall_sms.judges.base import Turn  # noqa: E402
from incall_sms.pattern_extractor import PatternExtractor  # noqa: E402

_HOURS = {w: str(i) for i, w in enumerate(
    ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"), start=1)}


def same(expected: str, value: str) -> bool:
    """The same value: equal, holding the other as whole words, or the same words in another order.

    Leading "at"/"on"/"for" are ignored ("10:30 tomorrow" equals "tomorrow at 10:30"), a label's
    "half past nine" is 9:30 and "three o'clock" is 3 (this table is the scorer's own, not the
    extractor's), and a whole hour's ":00" is dropped ("3:00" equals "3"). The same words in another
    order count too, "morning" as am, "afternoon"/"evening" as pm, am/pm itself aside ("4:30 Friday
    afternoon" and "4:00 on Wednesday" for "Friday at 4:30 pm" and "Wednesday at 4 pm").
    """

    def norm(text: str) -> str:
        flat = " ".join(text.lower().replace(",", " ").split())
        flat = re.sub(r"\b(half past|quarter past) (\w+)\b",
                      lambda m: f"{_HOURS.get(m.group(2), m.group(2))}:{'30' if m.group(1) == 'half past' else '15'}",
                      flat)
        flat = re.sub(r"\b(\w+) o'clock\b", lambda m: str(_HOURS.get(m.group(1), m.group(1))), flat)
        flat = re.sub(r"\b(\d{1,2}):00\b", r"\1", flat)
        return " " + re.sub(r"\b(\d{1,2}) ([0-5]\d)\b", r"\1:\2", re.sub(r"^(?:at|on|for) ", "", flat)) + " "

    def words(text: str) -> list[str]:
        parts = {"morning": "am", "afternoon": "pm", "evening": "pm"}  # "7:00 Friday morning" / "Friday at 7 am"
        return sorted(parts.get(w, w) for w in norm(text).split() if w not in ("at", "on", "for", "in", "the"))
    def bare(text: str) -> set[str]:
        return set(words(text)) - {"am", "pm"}
    # the same words in another order, am/pm aside ("4:00 on Wednesday" for "Wednesday at 4 pm")
    return norm(value) in norm(expected) or norm(expected) in norm(value) or bare(value) == bare(expected)


def score(path: pathlib.Path, *, verbose: bool = False) -> dict[str, int]:
    """Counts for one file (``verbose`` prints every wrong and missed value)."""
    counts = {"right": 0, "wrong": 0, "missed": 0}
    extractor = PatternExtractor()
    for line in path.read_text(encoding="utf-8").splitlines():
        case = json.loads(line)
        got = extractor.extract_now([Turn(t["role"], t["text"]) for t in case["transcript"]], case["wanted"])
        for name in case["wanted"]:
            expected, value = case["expected"].get(name), got.get(name)
            kind = ("right" if expected is None else "missed") if value is None else \
                "right" if expected is not None and same(expected, value) else "wrong"
            counts[kind] += 1
            if verbose and kind != "right":
                print(f"{kind.upper():6} {case.get('id', '?')} {name}: expected {expected!r}, got {value!r}")
    return counts


def main(args: list[str]) -> int:
    """Score each file; exit 1 when a value is wrong."""
    verbose = "-v" in args
    default = sorted((ROOT / "tests" / "data" / "extract").glob("*.jsonl"))
    paths = [pathlib.Path(a) for a in args if a != "-v"] or default
    total = {"right": 0, "wrong": 0, "missed": 0}
    for path in paths:
        counts = score(path, verbose=verbose)
        print(json.dumps({"file": path.name, **counts}))
        for key, value in counts.items():
            total[key] += value
    print(json.dumps({"file": "total", **total}))
    return 1 if total["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
