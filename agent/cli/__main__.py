"""``python -m agent.cli``: the ``ykt`` command."""

import sys

from agent.cli import main

if __name__ == "__main__":      # importing the module (tests list every module) runs nothing
    sys.exit(main())
