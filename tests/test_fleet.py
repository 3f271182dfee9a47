"""A fleet on one PostgreSQL outbox: a worker SIGKILLed mid-send, never restarted, loses nothing.

Two worker processes (tests/helpers/fleet_worker.py) share a real PostgreSQL server and send through
the real twilio client to the loopback Twilio peer (request timeout 3 s, lease 8 s: a request on the
wire always ends before its lease can run out). Worker A's texts are held by the peer: a third answered
(A records them), a third created but never answered, a third never created; A's requests time out,
the rows turn ``ambiguous`` and A asks the peer whether they exist, and those lookups hang too. A's
last write is then two lease lengths old: only renewal keeps its rows, and B (recovering every 0.5 s)
must touch none. Then A is SIGKILLed and never restarted: B's recovery takes the rows once their
leases run out, asks the provider before any resend, and finishes every one: each text exists exactly
once at the provider, and each row says which.
"""

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter

from incall_sms.outbox_postgres import PostgresOutbox
from tests.conftest import ROOT
from tests.helpers.postgres import fresh_database
from tests.peers.twilio_peer import Fault, TwilioPeer

SENDS_A, SENDS_B, LEASE, TIMEOUT = 30, 6, 8.0, 3.0


async def start_worker(url, base_url, worker_id, sends, out):
    log = out.with_name(f"worker-{worker_id}.log")
    with log.open("ab") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.helpers.fleet_worker", url, base_url, worker_id, str(sends), str(LEASE),
            str(TIMEOUT), str(out), cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE, stderr=stderr)
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert line.strip() == b"ready", log.read_text()[-3000:]
    return proc


def events(out):
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


async def until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_a_killed_worker_s_sends_are_finished_by_another(postgres_server_url, tmp_path):
    url = await fresh_database(postgres_server_url, "fleet_kill")
    out = tmp_path / "events.jsonl"
    first_seen: set[str] = set()

    def hold_a(form):
        body = form["Body"][0]
        if not body.startswith("A ref ") or body in first_seen:
            return None  # B's own texts, and resends after A's death, are answered normally
        first_seen.add(body)
        kind = int(body.rsplit(" ", 1)[1]) % 3
        if kind == 0:
            return None  # answered: A records it sent
        if kind == 1:
            return Fault(delay=300, commit=True)  # created; A never hears back
        return Fault(status=500, delay=300, commit=False)  # never created; A never hears back

    observer = PostgresOutbox(url, worker_id="observer")
    workers = {}
    lookups = {"held": True}
    async with TwilioPeer() as peer:
        peer.fault_for = hold_a
        peer.list_fault_for = lambda query: Fault(delay=300) if lookups["held"] else None  # A's lookups hang
        try:
            workers["A"] = await start_worker(url, peer.base_url, "A", SENDS_A, out)
            workers["B"] = await start_worker(url, peer.base_url, "B", SENDS_B, out)

            async def a_is_asking():
                rows = await observer.unfinished()
                return len(rows) == SENDS_A - SENDS_A // 3 and {r.status for r in rows} == {"ambiguous"}
            await until(a_is_asking, 60, "A's requests to time out and its lookups to start")
            last_write = max(r.updated_at for r in await observer.unfinished())

            # A is alive, its lookups hang: two lease lengths pass with no write, only renewals keep its rows
            await asyncio.sleep(2 * LEASE)
            in_flight = await observer.unfinished()
            assert {(r.status, r.lease_owner, r.lease_token) for r in in_flight} == {("ambiguous", "A", 1)}
            assert max(r.updated_at for r in in_flight) == last_write  # no write since...
            assert min(r.lease_until for r in in_flight) > time.time()  # ...yet every lease is current
            assert not [e for e in events(out) if e["worker"] == "B" and e["key"].startswith("CA-A-")]
            assert Counter(m.body.split(" ref ")[0] for m in peer.messages)["A"] == 2 * SENDS_A // 3

            killed = workers.pop("A")
            killed.send_signal(signal.SIGKILL)
            await killed.wait()
            died = time.monotonic()
            lookups["held"] = False

            async def all_finished():
                return not await observer.unfinished()
            await until(all_finished, 60, "B to finish A's rows")
            took = time.monotonic() - died

            async def all_reported():  # B writes each event after its row: wait for the last before killing B
                try:
                    reported = {e["key"] for e in events(out) if e["worker"] == "B" and e["key"].startswith("CA-A-")}
                except ValueError:  # a line being written
                    return False
                return len(reported) >= len([i for i in range(SENDS_A) if i % 3])
            await until(all_reported, 30, "B's events for A's rows")
        finally:
            for proc in workers.values():
                proc.kill()
                await proc.wait()

    rows = {}
    for i in range(SENDS_A):
        [rows[i]] = await observer.for_call(f"CA-A-{i}")
    b_rows = [r for i in range(SENDS_B) for r in await observer.for_call(f"CA-B-{i}")]
    await observer.aclose()
    per_body = Counter(m.body for m in peer.messages)
    by_sid = {m.sid: m for m in peer.messages}
    requests_a = Counter(f["Body"][0] for f in peer.requests if f["Body"][0].startswith("A ref "))
    finished_by_b = {e["key"] for e in events(out) if e["worker"] == "B" and e["key"].startswith("CA-A-")}
    print(f"A killed with {SENDS_A - SENDS_A // 3} sends in flight; B finished them {took:.1f} s after the kill "
          f"(lease {LEASE} s); requests for A's texts: {sum(requests_a.values())}; messages: {len(per_body)}")

    duplicates = sum(n - 1 for n in per_body.values() if n > 1)
    lost = [i for i, r in rows.items() if r.status != "accepted" or by_sid.get(r.sid) is None
            or by_sid[r.sid].body != f"A ref {i}"]
    assert duplicates == 0
    assert lost == []
    assert {r.status for r in b_rows} == {"accepted"} and len(b_rows) == SENDS_B
    assert finished_by_b == {f"CA-A-{i}:note:1" for i in range(SENDS_A) if i % 3}  # B finished A's unfinished rows
    # asked before any resend: the texts that were created were found, only the others were sent again
    assert {body for body, n in requests_a.items() if n == 2} == {f"A ref {i}" for i in range(SENDS_A) if i % 3 == 2}
    assert all(r.lease_owner is None for r in rows.values())
