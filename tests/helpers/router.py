"""The inbound router's test set-up, shared by the inbound test modules (import the fixture to use it)."""

import pytest

from incall_sms.inbound import InboundRouter, InProcessCallRegistry
from incall_sms.optout import SqliteOptOutStore


@pytest.fixture(name="parts")
async def router_parts(tmp_path):
    """``(registry, router, optouts)``: an in-process registry, a router storing in ``tmp_path``, opt-outs."""
    optouts = SqliteOptOutStore()
    registry = InProcessCallRegistry()
    router = InboundRouter(registry=registry, optouts=optouts, store_path=tmp_path / "inbound.db")
    yield registry, router, optouts
    router.close()
