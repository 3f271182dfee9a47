"""A worker of a fleet sharing one PostgreSQL outbox, for the kill test (tests/test_fleet.py).

Usage: python -m tests.helpers.fleet_worker DATABASE_URL TWILIO_BASE_URL WORKER_ID SENDS LEASE TIMEOUT OUT_FILE

Sends SENDS texts for calls of its own (all at once, through the real twilio client), runs outbox
recovery for its whole life (a pass every 0.5 s), and appends one JSON line per outcome event (sent or
failed, whether its own send or a recovered one) to OUT_FILE.
"""

import asyncio
import json
import sys

from incall_sms.actions import parse_actions
from incall_sms.clock import SystemClock
from incall_sms.dispatcher import CallContext, Dispatcher
from incall_sms.optout import SqliteOptOutStore
from incall_sms.outbox_postgres import PostgresOutbox
from incall_sms.providers.twilio import TwilioProvider
from incall_sms.retry import RetryPolicy
from tests.peers.twilio_peer import ACCOUNT_SID, AUTH_TOKEN

ACTIONS = parse_actions({"actions": [{"name": "note", "condition": "whenever", "once_per_call": False,
                                      "content": {"template": "{ref}"}, "variables": {"ref": {}}}],
                         "max_sends_per_call": 5, "max_sends_per_destination": 1000})


async def main(database_url, base_url, worker_id, sends, lease, timeout, out_file):
    outbox = PostgresOutbox(database_url, worker_id=worker_id, lease_seconds=lease)
    provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=base_url, timeout=timeout)
    dispatcher = Dispatcher(actions=ACTIONS, provider=provider, outbox=outbox, optouts=SqliteOptOutStore(),
                            clock=SystemClock(), retry_policy=RetryPolicy(attempts=3, base_delay=0.05, jitter=0),
                            ambiguity_delay=0.2, recovery_interval=0.5, recovery_min_age=0.0)

    def record(event):
        if event.kind.value in ("sent", "failed"):
            with open(out_file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"worker": worker_id, "kind": event.kind.value, "key": event.key,
                                         "sid": event.sid, "reason": event.reason}) + "\n")

    dispatcher.subscribe(record)

    async def one(i):
        call = CallContext(call_id=f"CA-{worker_id}-{i}", caller_number="+14155552671",
                           agent_number="+14155550100")
        await dispatcher.send("note", call=call, turn=1, variables={"ref": f"{worker_id} ref {i}"})

    await outbox.open()
    async with dispatcher.recovery():
        print("ready", flush=True)
        await asyncio.gather(*(one(i) for i in range(sends)))
        await asyncio.Event().wait()  # serve until killed


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(a[0], a[1], a[2], int(a[3]), float(a[4]), float(a[5]), a[6]))
