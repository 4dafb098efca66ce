"""``python -m agent.cli``: the ``ykt`` command."""

import sys

from agent.cli import main

if __name__ == "__main__":      # imported (tests list every module's exceptions): no run
    sys.exit(main())
