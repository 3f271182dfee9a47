"""The loopback Twilio peer in its own process, so a benchmark's event loop carries only our work.

    async with PeerProcess(delay=2.0) as peer:   # answers every create after 2 s
        make_engine(peer=peer)                   # peer.base_url is all the engine needs
        ...
        sent = await peer.count()

Run directly, it serves until killed: ``python -m bench.peer_process --delay 2`` prints
``PEER http://127.0.0.1:PORT`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class PeerProcess:
    """A :class:`~tests.peers.twilio_peer.TwilioPeer` in a child process (the real twilio client talks to it).

    Args:
        delay: Seconds the peer waits before answering each create request.
    """

    def __init__(self, *, delay: float) -> None:
        self.delay = delay
        self.base_url = ""
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> PeerProcess:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.peer_process", "--delay", str(self.delay), cwd=str(ROOT),
            stdout=asyncio.subprocess.PIPE)
        assert self._process.stdout is not None
        try:
            line = await asyncio.wait_for(self._process.stdout.readline(), 30)
            if not line.startswith(b"PEER "):
                raise RuntimeError(f"the peer process did not start: {line!r}")
        except BaseException:
            await self.__aexit__()
            raise
        self.base_url = line.split()[1].decode()
        return self

    async def count(self) -> int:
        """Messages the peer has created so far."""
        from tests.peers.twilio_peer import ACCOUNT_SID, AUTH_TOKEN

        request = urllib.request.Request(
            f"{self.base_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json?PageSize=100000",
            headers={"Authorization": "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()})

        def get() -> int:
            with urllib.request.urlopen(request, timeout=10) as response:  # loopback only
                return len(json.load(response)["messages"])

        return await asyncio.to_thread(get)

    async def __aexit__(self, *exc: object) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()


async def _serve(delay: float) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.peers.twilio_peer import Fault, TwilioPeer

    async with TwilioPeer() as peer:
        peer.fault_for = lambda form: Fault(delay=delay)
        print(f"PEER {peer.base_url}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="serve the loopback Twilio peer until killed")
    parser.add_argument("--delay", type=float, default=0.0)
    asyncio.run(_serve(parser.parse_args().delay))
