#!/usr/bin/env python3
"""Front door of the in-call SMS agent. See ``python run_agent.py --help``."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
