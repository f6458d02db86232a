"""``python -m uronode``: the same command line as the ``uronode`` script."""

import sys

from uronode.app.cli import main

sys.exit(main())
