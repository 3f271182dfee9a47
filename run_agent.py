#!/usr/bin/env python3
"""Front door of the in-call SMS agent (the same as the installed ``incall-sms`` command).

See ``python run_agent.py --help``.
"""

import sys

from incall_sms.pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
