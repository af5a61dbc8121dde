"""The command line: `python -m core <noun> <verb>` (see `python -m core --help`)."""

import sys

from core.cli import main

sys.exit(main(sys.argv[1:]))
