"""How fast can a replay run the caller's audio through offline Whisper on this machine?

Replays corpus calls with ``--stt whisper`` at several speeds and prints one JSON object: per
speed, how far behind the recording each recognised caller turn is reported (call seconds
between the recorded final transcript and the recognised one) and how long the replay had to
wait for the STT before recorded agent turns. The default ``--stt whisper`` speed is the fastest
whose lag stays about as small as a live STT's.

    python bench/replay_whisper_pace.py [--speeds 1,2,4,8] [--calls two_actions,e2e_link,booking_confirmation]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


async def measure(speeds: list[float], calls: list[str]) -> dict[str, object]:
    from loguru import logger

    logger.remove()
    from incall_sms.actions import load_actions
    from incall_sms.pipeline.recording import load_recording
    from incall_sms.pipeline.replay import replay

    actions = load_actions(ROOT / "tests" / "calls" / "actions.yaml")
    out: dict[str, object] = {}
    for speed in speeds:
        lags: list[float] = []
        wait = 0.0
        began = time.monotonic()
        for name in calls:
            path = ROOT / "tests" / "calls" / f"{name}.jsonl"
            _events, meta = load_recording(path)
            report = await replay(path, actions=actions, stt="whisper", speed=speed)
            heard = [t for t in report.conversation if t.who == "caller"]
            lags += [round(h.t - r.t, 2) for r, h in zip(meta.stt, heard, strict=False)]
            wait += report.stt_wait_s
        out[f"{speed:g}x"] = {"lag_s": lags, "max_lag_s": max(lags, default=0.0), "stt_wait_s": round(wait, 2),
                              "wall_s": round(time.monotonic() - began, 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speeds", default="1,2,4,8")
    parser.add_argument("--calls", default="two_actions,e2e_link,booking_confirmation")
    args = parser.parse_args()
    speeds = [float(s) for s in args.speeds.split(",")]
    print(json.dumps(asyncio.run(measure(speeds, args.calls.split(","))), indent=2))


if __name__ == "__main__":
    main()
