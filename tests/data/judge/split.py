"""Split the labelled judge cases into train / dev / test **by condition** (reproducible).

A condition's cases all go to one split, so the test split measures conditions the judge (its
prompt, threshold and rules) was never tuned on. Within each group of conditions (one per source
file and language), conditions are ordered by the SHA-256 of their text and dealt out as 50 %
train, 20 % dev, 30 % test: every group, including the Spanish and German ones, has test conditions.

Usage: python tests/data/judge/split.py   (rewrites train.jsonl, dev.jsonl, test.jsonl here)
"""

import collections
import hashlib
import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
SOURCES = ("set_a.jsonl", "set_b.jsonl", "set_c.jsonl")
#: Position (mod 10) of a condition in its group -> split.
DEAL = {0: "train", 1: "test", 2: "train", 3: "dev", 4: "train", 5: "test", 6: "train", 7: "dev", 8: "train",
        9: "test"}


def main() -> None:
    out: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for source in SOURCES:
        rows = [json.loads(line) for line in (HERE / source).read_text(encoding="utf-8").splitlines() if line]
        groups: dict[str, dict[str, list[dict]]] = collections.defaultdict(lambda: collections.defaultdict(list))
        for row in rows:
            groups[row.get("lang", "en")][row["condition"]].append(row)
        for conditions in groups.values():
            ordered = sorted(conditions, key=lambda c: hashlib.sha256(c.encode()).hexdigest())
            for index, condition in enumerate(ordered):
                out[DEAL[index % 10]].extend(conditions[condition])
    for name, rows in out.items():
        (HERE / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                            encoding="utf-8")
        langs = collections.Counter(r.get("lang", "en") for r in rows)
        print(f"{name}: {len(rows)} cases, {len({r['condition'] for r in rows})} conditions, "
              f"{sum(r['fires'] for r in rows)} true, languages {dict(langs)}")


if __name__ == "__main__":
    main()
