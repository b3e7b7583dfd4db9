"""``python -m varprop`` runs the console script."""

import sys

from varprop._src.cli import main

sys.exit(main())
