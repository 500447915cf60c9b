"""``python -m stepsync`` runs the ``stepsync`` command."""

import sys

from stepsync.cli import main

if __name__ == "__main__":
    sys.exit(main())
