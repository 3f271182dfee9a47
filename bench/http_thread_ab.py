#!/usr/bin/env python3
"""The Twilio client's HTTP work on its own thread vs on the pipeline's event loop, side by side.

    python bench/http_thread_ab.py [--sends 1 10 50] [--pairs 5] [--modes thread loop]

For each number of sends in flight and each pair: the pass-through pipeline, then the SMS pipeline
(``bench.run.audio_path``), once with ``TwilioProvider(http_thread=False)`` (``loop``) and once with
the default (``thread``: its own thread), the modes' order alternating from pair to pair. The
start-up heap is frozen first, as ``serve`` does. Prints one JSON object: per mode and number of
sends, the median and all of the added max audio gaps (SMS minus pass-through, ms); each run's
figure and its collector pauses go to stderr as they come.
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
from incall_sms.pipeline.service import freeze_startup_heap

MODES = ("thread", "loop")


async def main(sends: list[int], pairs: int, modes: list[str]) -> dict:
    await bench.audio_path(1, "sms")  # imports and first-use set-up, as a server's start-up does
    freeze_startup_heap()
    out: dict = {}
    for n in sends:
        added: dict[str, list[float]] = {mode: [] for mode in modes}
        for i in range(pairs):
            for mode in modes if i % 2 == 0 else modes[::-1]:
                base = await bench.audio_path(n, "baseline", http_thread=mode == "thread")
                sms = await bench.audio_path(n, "sms", http_thread=mode == "thread")
                added[mode].append(round(sms["output_max_gap_ms"] - base["output_max_gap_ms"], 2))
                print(f"{n} sends, {mode}: {added[mode][-1]} ms (gc {sms['gc_collections']}, "
                      f"longest {sms['gc_max_pause_ms']} ms)", file=sys.stderr)
        out[f"sends_{n}"] = {mode: {"added_max_gap_ms_median": statistics.median(v), "runs": sorted(v)}
                             for mode, v in added.items()}
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.sends, args.pairs, args.modes)), indent=2))
