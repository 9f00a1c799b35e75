"""`python -m services.runner`: the runner agent (see services/runner/config.py for flags)."""

import sys

from services.runner.server import main

sys.exit(main())
