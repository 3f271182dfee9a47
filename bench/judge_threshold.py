#!/usr/bin/env python3
"""Choose the local judge's threshold from scored decisions (tune on train/dev only, never on test).

    python run_agent.py judge eval tests/data/judge/train.jsonl --judge local --decisions train.dec.jsonl
    python run_agent.py judge eval tests/data/judge/dev.jsonl --judge local --decisions dev.dec.jsonl
    python bench/judge_threshold.py train.dec.jsonl dev.dec.jsonl [--apply 0.6 test.dec.jsonl]

Prints one JSON object: the area under the ROC curve of the model's scores, P/R/F1/F0.5 at every
candidate threshold, and the chosen one: the best F0.5 (precision weighs twice recall: a wrong text
is worse than a missed one), also reported: the best F1 among thresholds with precision at least
``--min-precision``, when there is one. Decisions made by a rule (no score) count as they were
decided. ``--apply T FILE...`` scores other files at ``T`` (and ``--agree A``, below).

When the decisions say whether the embedded rules fired too (``rules``, written by the local judge),
``chosen_with_rules`` is the best F0.5 of a threshold pair: ``threshold`` alone, or ``agree_threshold``
(lower) where the rules fire (ties: the higher thresholds, fewer texts).
"""

from __future__ import annotations

import argparse
import json
import sys


def load(paths: list[str]) -> list[dict]:
    rows = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            rows += [json.loads(line) for line in handle if line.strip()]
    return rows


def scores_at(rows: list[dict], threshold: float, agree: float | None = None) -> dict:
    tp = fp = fn = 0
    for row in rows:
        bar = agree if agree is not None and row.get("rules") else threshold
        fired = row["fired"] if row["score"] is None or row["part"] != "model" else row["score"] >= bar
        tp += fired and row["fires"]
        fp += fired and not row["fires"]
        fn += (not fired) and row["fires"]
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    f05 = 1.25 * precision * recall / (0.25 * precision + recall) if precision + recall else 0.0
    return {"threshold": threshold, **({"agree_threshold": agree} if agree is not None else {}),
            "precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "f0_5": round(f05, 4), "n": len(rows)}


def auc(rows: list[dict]) -> float | None:
    scored = [(r["score"], r["fires"]) for r in rows if r["part"] == "model" and r["score"] is not None]
    positives = [s for s, y in scored if y]
    negatives = [s for s, y in scored if not y]
    if not positives or not negatives:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return round(wins / (len(positives) * len(negatives)), 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="decision files of the tuning splits")
    parser.add_argument("--min-precision", type=float, default=0.9)
    parser.add_argument("--apply", nargs="+", metavar=("T", "FILE"), default=None,
                        help="a threshold, then decision files to score at it")
    parser.add_argument("--agree", type=float, default=None,
                        help="with --apply: the lower threshold where the embedded rules fire too")
    args = parser.parse_args(argv)
    if args.agree is not None and (not args.apply or args.agree > float(args.apply[0])):
        parser.error("--agree needs --apply T with T >= the agree threshold")
    rows = load(args.files)
    grid = [round(0.025 * i, 3) for i in range(4, 40)]
    table = [scores_at(rows, t) for t in grid]
    chosen = max(table, key=lambda s: (s["f0_5"], s["threshold"]))
    precise = [s for s in table if s["precision"] >= args.min_precision]
    out = {"tuned_on": args.files, "auc": auc(rows), "chosen": chosen,
           "best_f1_at_min_precision": max(precise, key=lambda s: s["f1"]) if precise else None, "grid": table}
    if any(row.get("rules") is not None for row in rows):
        pairs = [scores_at(rows, t, a) for t in grid for a in grid if a <= t]
        out["chosen_with_rules"] = max(pairs, key=lambda s: (s["f0_5"], s["threshold"], s["agree_threshold"]))
    if args.apply:
        threshold, files = float(args.apply[0]), args.apply[1:]
        out["applied"] = {path: scores_at(load([path]), threshold, args.agree) | {"auc": auc(load([path]))}
                          for path in files}
    json.dump(out, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
