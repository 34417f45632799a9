"""``python -m crosslens ARGS`` (and ``torchrun -m crosslens ARGS``): the ``crosslens`` command."""

import sys

from crosslens.cli import main

if __name__ == "__main__":
    sys.exit(main())
