"""Pipeline builders (live agent, simulation, replay) and the CLI behind run_agent.py."""
