"""`python -m spawnproxy`: the command line (see `spawnproxy --help`).

Uses `_cli` only.
"""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
