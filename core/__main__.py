"""`python -m core`: the same command line as the `quantlens` console script."""

import sys

from core.cli import main

sys.exit(main())
