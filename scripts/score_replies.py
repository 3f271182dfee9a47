#!/usr/bin/env python3
"""Score the consent-answer reader and the reply parser on labelled JSONL sets; prints one JSON object.

    python scripts/score_replies.py                       # the sets in tests/data
    python scripts/score_replies.py --consent tests/data/consent_answers_blind.jsonl
    python scripts/score_replies.py --consent FILE.jsonl  # another consent set ({"answer", "label": yes|no|unclear})

Consent: precision/recall of "yes" (a wrong yes sends a text the caller did not agree to) and of "no"
(a wrong no remembers a refusal for the call). Replies: the share read exactly (validity and value).
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from incall_sms.replies import classify_yes_no, parse_reply  # noqa: E402


def score_consent(rows: list[dict]) -> dict:
    """Precision and recall of the reader's yes and no on labelled answers."""
    confusion = collections.Counter((r["label"], classify_yes_no(r["answer"]) or "unclear") for r in rows)
    out: dict = {"n": len(rows)}
    for label in ("yes", "no"):
        tp = confusion[(label, label)]
        said = sum(v for (_, got), v in confusion.items() if got == label)
        true = sum(v for (want, _), v in confusion.items() if want == label)
        out[f"{label}_precision"] = round(tp / said, 3) if said else None
        out[f"{label}_recall"] = round(tp / true, 3) if true else None
        out[f"wrong_{label}"] = said - tp
    return out


def score_replies(rows: list[dict]) -> dict:
    """Share of replies read exactly, and how many were accepted with a wrong value (the costly error)."""
    exact = wrong_accepted = 0
    for row in rows:
        parsed = parse_reply(row["kind"], row["body"])
        exact += parsed.ok == row["valid"] and (not parsed.ok or parsed.value == row["value"])
        wrong_accepted += parsed.ok and (not row["valid"] or parsed.value != row["value"])
    return {"n": len(rows), "exact": round(exact / len(rows), 3), "wrong_accepted": wrong_accepted}


def _read(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main() -> int:
    """Score the sets named on the command line (default: the repository's) and print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--consent", type=pathlib.Path, default=ROOT / "tests" / "data" / "consent_answers.jsonl")
    parser.add_argument("--replies", type=pathlib.Path, default=ROOT / "tests" / "data" / "reply_values.jsonl")
    args = parser.parse_args()
    print(json.dumps({"consent": score_consent(_read(args.consent)), "replies": score_replies(_read(args.replies))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
