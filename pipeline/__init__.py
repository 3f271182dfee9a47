"""Builders and entry points: the live phone agent, the local simulation, recorded-call replays, the CLI.

``DEFAULT_ACTIONS`` and ``DEMO_CALL`` are the embedded defaults the simulation runs on (and
``serve`` falls back to when ``SMS_ACTIONS_FILE`` is not set): they ship inside the package.
"""

import pathlib

DEFAULTS = pathlib.Path(__file__).resolve().parent / "defaults"
#: The demo action file (a restaurant/clinic booking agent).
DEFAULT_ACTIONS = DEFAULTS / "actions.yaml"
#: The bundled demo call script of the simulation.
DEMO_CALL = DEFAULTS / "demo_call.txt"

__all__ = ["DEFAULTS", "DEFAULT_ACTIONS", "DEMO_CALL"]
