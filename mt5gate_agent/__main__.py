"""``python -m mt5gate_agent ...``: the agent without the server's console script."""

import sys

from mt5gate_agent.cli import main

sys.exit(main())
