"""`python -m failmode` runs the command-line interface."""

import sys

from failmode.cli import main

sys.exit(main())
