"""``python -m inference``: the inference subcommands without the rest of the node."""

import sys

from inference.cli import main

sys.exit(main())
