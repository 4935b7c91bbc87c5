"""``python -m tokenprune``: the same command line as ``tokenprune``."""

from __future__ import annotations

import sys

from tokenprune.cli import main

if __name__ == "__main__":
    sys.exit(main())
