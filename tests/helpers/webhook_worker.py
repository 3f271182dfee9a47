"""A webhook worker process for the multi-worker test: shared Redis stores, its own port.

Usage: python -m tests.helpers.webhook_worker REDIS_URL PORT WORKER_ID STORE_DB [CALLER AGENT OUT_FILE]
With CALLER/AGENT/OUT_FILE the worker owns that "live call" and appends every message it gets to OUT_FILE.
With OUTBOX_DATABASE_URL in the environment the workers share a PostgreSQL outbox (else each has its own
SQLite file next to STORE_DB); with EVENTS_OUT a worker that owns no call notes the events it raises there.
With AWAIT_REPLY=1 the owner's call texts "reply with your email" at start (an ``await_reply`` action run by
a real ActionEngine) and its handler offers every message to the engine first, as the inbound processor does.
"""

import asyncio
import json
import os
import sys

import uvicorn

from incall_sms.actions import parse_actions
from incall_sms.dispatcher import CallContext, Dispatcher
from incall_sms.engine import ActionEngine, Firing
from incall_sms.inbound import InboundRouter
from incall_sms.judges.base import Match
from incall_sms.judges.embedded import EmbeddedJudge
from incall_sms.outbox import Outbox
from incall_sms.pipeline.server import WebhookService, WebhookSettings, create_app
from incall_sms.providers.local import LocalProvider
from incall_sms.redis_store import RedisCallRegistry, RedisOptOutStore, RedisSeenKeys, connect
from tests.peers.twilio_peer import AUTH_TOKEN

PUBLIC = "https://agent.example.com"


async def main(redis_url, port, worker_id, store_db, own=None):
    client = connect(redis_url)
    registry = RedisCallRegistry(client, worker_id=worker_id)
    router = InboundRouter(registry=registry, optouts=RedisOptOutStore(client), store_path=store_db,
                           seen=RedisSeenKeys(client))
    registry.orphan = router.store_unrouted
    registry.deliver = router.hand_over
    actions = parse_actions({"actions": [
        {"name": "link", "condition": "if the caller wants the link", "content": {"template": "https://example.com"}},
        {"name": "ask_email", "condition": "if the caller wants to text their email address",
         "content": {"template": "Reply with your email address."},
         "await_reply": {"variable": "email", "kind": "email", "timeout": 60}},
    ]})
    if os.environ.get("OUTBOX_DATABASE_URL"):
        from incall_sms.outbox_postgres import PostgresOutbox

        outbox = PostgresOutbox(os.environ["OUTBOX_DATABASE_URL"], worker_id=worker_id)
    else:
        outbox = Outbox(store_db + ".outbox")
    dispatcher = Dispatcher(actions=actions, provider=LocalProvider(), outbox=outbox,
                            optouts=RedisOptOutStore(client))
    registry.status_handler = dispatcher.handle_status
    registry.event_handler = dispatcher.publish

    out_file = own[2] if own else os.environ.get("EVENTS_OUT")  # a worker without the call may note events too

    def record(item):
        if out_file:
            with open(out_file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({**item, "worker": worker_id}) + "\n")

    async def on_event(event):
        if event.kind.value == "sent":
            await registry.claim_sid(event.sid)
            record({"sent": event.sid})
        elif event.kind.value == "delivered":
            record({"delivered": event.sid})

    dispatcher.subscribe(on_event)

    async def startup():
        await registry.start()
        if own:
            caller, agent, _ = own

            call = CallContext(call_id="CAowner", caller_number=caller, agent_number=agent)
            engine = ActionEngine(dispatcher=dispatcher, call=call, judge=EmbeddedJudge())

            async def handler(message):
                if "[the caller hangs up]" in message.body:  # stands for a call that ends before the text gets in
                    raise RuntimeError("the call ended")
                note = engine.offer_reply(message) if os.environ.get("AWAIT_REPLY") else None
                record({"sid": message.sid, "body": message.body, "as_reply": note is not None,
                        "email": engine.variables.get("email")})

            await registry.register(caller, agent, handler)
            await dispatcher.send("link", call=call, turn=1)
            if os.environ.get("AWAIT_REPLY"):
                ask = actions.get("ask_email")
                await engine.execute(Firing(action=ask, turn=2, at="turn", match=Match(id=ask.name, confidence=1.0,
                                                                                       reason="test")))
        print("ready", flush=True)

    service = WebhookService(settings=WebhookSettings(public_url=PUBLIC, auth_token=AUTH_TOKEN), router=router,
                             dispatcher=dispatcher, status_router=registry.route_status,
                             event_router=registry.route_event)
    app = create_app(service, startup=startup, shutdown=registry.aclose)
    await uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")).serve()


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(args[0], int(args[1]), args[2], args[3], tuple(args[4:7]) if len(args) >= 7 else None))
