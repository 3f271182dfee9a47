"""How the recipients rule does on labelled judge files: the cases it says no to, real requests among them.

A real request vetoed would be a text the caller asked for and never got.

Usage: python scripts/score_recipients.py [FILE.jsonl ...]   (default: tests/data/judge/{train,dev,test,unseen})
"""

from __future__ import annotations

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from incall_sms.judges.recipients import vetoes  # noqa: E402


def main(paths: list[str]) -> int:
    """Print, per file, the vetoed cases; exit 1 when a real request was vetoed."""
    files = paths or [str(ROOT / "tests" / "data" / "judge" / f"{n}.jsonl") for n in ("train", "dev", "test", "unseen")]
    wrong = 0
    for path in files:
        vetoed = []
        for line in pathlib.Path(path).read_text(encoding="utf-8").splitlines():
            case = json.loads(line)
            last = case["transcript"][-1]
            if case.get("at", "turn") == "turn" and last["role"] == "user" and vetoes(case["condition"], last["text"]):
                vetoed.append(case)
        real = [c for c in vetoed if c["fires"]]
        wrong += len(real)
        print(f"{pathlib.Path(path).name}: {len(vetoed)} vetoed, {len(real)} of them real requests")
        for case in vetoed:
            print(f"  {'REAL ' if case['fires'] else ''}{case['id']}: {case['transcript'][-1]['text'][:100]}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
