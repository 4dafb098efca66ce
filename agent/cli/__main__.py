"""``python -m agent.cli``: the ``ykt`` command."""

import sys

from agent.cli import main

if __name__ == "__main__":      # importing it (the error-tree test imports every module) runs nothing
    sys.exit(main())
