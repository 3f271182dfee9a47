"""Child process for the crash test: send one SMS through the real Twilio client, then wait.

Usage: python -m tests.helpers.send_once DB BASE_URL
"""

import asyncio
import sys

from incall_sms.actions import parse_actions
from incall_sms.dispatcher import CallContext, Dispatcher
from incall_sms.optout import SqliteOptOutStore
from incall_sms.outbox import Outbox
from incall_sms.providers.twilio import TwilioProvider
from tests.peers.twilio_peer import ACCOUNT_SID, AUTH_TOKEN

ACTIONS = {"actions": [{"name": "link", "condition": "if asked", "content": {"template": "https://example.com/x"}}]}


async def main(db: str, base_url: str) -> None:
    provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=base_url, timeout=20)
    dispatcher = Dispatcher(
        actions=parse_actions(ACTIONS), provider=provider, outbox=Outbox(db), optouts=SqliteOptOutStore(db + ".optouts")
    )
    call = CallContext(call_id="CAcrash", caller_number="+14155552671", agent_number="+14155550100")
    print("sending", flush=True)
    await dispatcher.send("link", call=call, turn=3)
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
