"""``python -m agent.cli``: the ``ykt`` command."""

import sys

from agent.cli import main

if __name__ == "__main__":      # importing it (the module walk of tests/test_errors.py) runs nothing
    sys.exit(main())
