import sys

from uronode.cli import main

sys.exit(main())
