#!/usr/bin/env python3
"""The Twilio client's HTTP work on its own thread vs on the pipeline's event loop, side by side.

    python bench/http_thread_ab.py [--sends 1 10 50] [--pairs 5]

For each number of sends in flight and each pair: the pass-through pipeline, then the SMS pipeline
(``bench.run.audio_path``), once with ``TwilioProvider(http_thread=False)`` and once with the default
(its own thread), alternating. Prints one JSON object: per mode and number of sends, the median and all
of the added max audio gaps (SMS minus pass-through, ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import run as bench


async def main(sends: list[int], pairs: int) -> dict:
    out: dict = {}
    for n in sends:
        added: dict[str, list[float]] = {"loop": [], "thread": []}
        for _ in range(pairs):
            for mode in ("loop", "thread"):
                base = await bench.audio_path(n, "baseline", http_thread=mode == "thread")
                sms = await bench.audio_path(n, "sms", http_thread=mode == "thread")
                added[mode].append(round(sms["output_max_gap_ms"] - base["output_max_gap_ms"], 2))
        out[f"sends_{n}"] = {mode: {"added_max_gap_ms_median": statistics.median(v), "runs": sorted(v)}
                             for mode, v in added.items()}
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.sends, args.pairs)), indent=2))
