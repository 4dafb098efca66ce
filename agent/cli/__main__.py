"""``python -m agent.cli``: the ``ykt`` command."""

import sys

from agent.cli import main

sys.exit(main())
