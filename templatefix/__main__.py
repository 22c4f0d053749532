"""``python -m templatefix``: the same command line as the ``templatefix`` script."""

import sys

from templatefix.cli import main

sys.exit(main())
